"""LlamaFactory's data: record formats (alpaca, sharegpt, openai) and dataset_info.json."""
