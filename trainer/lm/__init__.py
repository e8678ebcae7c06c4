"""Stage two for language models: ``train`` (``train_lm``, ``evaluate_lm``), ``chunked``
(``ChunkedHeadLoss``: the head and the loss a chunk of rows at a time), ``students``
(built-in GPT, ``hf:DIR`` and ``module:function`` students, saved without pickle) and ``cli``
(``distill train-lm``). The public names are re-exported at ``trainer``."""
