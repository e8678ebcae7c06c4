"""Stage two: train students from a soft-label store at any temperature. No teacher runs here.

For your own training loop, use ``softlabels.SoftTargetDataset`` with one of the loss modules
exported here (``HintonKD``, ``SoftCE``, ``LogitMatching``). The built-in recipe is
``trainer.train`` (one run; it accepts an opened store), and ``trainer.compare.compare`` runs the
`make distill` experiment. The only thing read from stage one is the store, and the only thing
asked of it is ``StoreReader.soft_targets``: the teacher's log soft targets at T.
Language-model students train from token stores with ``trainer.train_lm`` (`distill train-lm`);
``DivergenceKD`` is the reverse-KL or JSD KD term, and ``ChunkedHeadLoss`` wraps either to take their hidden states and head a chunk at a time.
"""

from trainer.divergences import DivergenceKD
from trainer.lm.chunked import ChunkedHeadLoss
from trainer.lm.train import LMConfig, evaluate_lm, train_lm
from trainer.modules import HintonKD, LogitMatching, SoftCE
from trainer.train import TrainConfig, train

__all__ = [
    "ChunkedHeadLoss",
    "DivergenceKD",
    "HintonKD",
    "LMConfig",
    "LogitMatching",
    "SoftCE",
    "TrainConfig",
    "evaluate_lm",
    "train",
    "train_lm",
]
