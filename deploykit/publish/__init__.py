"""Publishing a verified release bundle: the model card and the Hub's Ollama files
(:mod:`.card`), Hugging Face (:mod:`.hf`), ModelScope (:mod:`.modelscope`) and an Ollama registry
(:mod:`.registry`).
``deploykit.pipeline.push`` checks the bundle first and calls these."""
