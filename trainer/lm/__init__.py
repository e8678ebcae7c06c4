"""Stage two for language models: ``train`` (``train_lm``, ``evaluate_lm``), ``students``
(built-in GPT, ``hf:DIR`` and ``module:function`` students, saved without pickle) and ``cli``
(``distill train-lm``). The public names are re-exported at ``trainer``."""
