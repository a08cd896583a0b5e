"""Build hook: the wheel carries deploykit's data (the template families, the llama.cpp pin).

The data is committed where the project keeps it (``modelfile_templates/``,
``vendor/llama.cpp.json``); ``build_py`` copies it into the package as ``deploykit/_bundled/``,
where ``deploykit.core.paths.package_data`` finds it in an installed wheel. An editable install
reads it in place instead. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Repository paths shipped as package data (keep in sync with core.paths.package_data users).
DATA = ("modelfile_templates", "vendor/llama.cpp.json")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / "deploykit" / "_bundled"
        for name in DATA:
            src, out = root / name, dest / name
            if not src.exists():
                raise SystemExit(
                    f"error: {src} is missing: deploykit's wheel needs it (MANIFEST.in)"
                )
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, dirs_exist_ok=True)
            else:
                shutil.copyfile(src, out)


setup(cmdclass={"build_py": BuildPyWithData})
