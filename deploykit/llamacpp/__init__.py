"""The pinned llama.cpp: its tree, its build, every run of its tools, llama-server, GGUF headers."""
