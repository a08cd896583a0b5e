"""The minimal PEFT trainer: LlamaFactory data formats, peft methods, ``transformers.Trainer``.

``run.train(TrainArgs(...))`` is the library entry point; ``deploykit train`` its command.
"""
