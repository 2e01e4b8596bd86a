"""One-in, one-out stages: map and filter, shuffle, pair sampling, tokenization."""

from torchseq.stages.sample_pairs import SamplePairs
from torchseq.stages.shuffle import BufferShuffle
from torchseq.stages.tokenize import Tokenize, load_encoder, tokenizer_spec
from torchseq.stages.transform import Filter, Map

__all__ = ["BufferShuffle", "Filter", "Map", "SamplePairs", "Tokenize", "load_encoder", "tokenizer_spec"]
