"""The core every layer uses: errors and exit codes, reports, options as data, files, paths, ui."""
