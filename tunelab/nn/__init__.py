"""From-scratch neural network blocks in plain PyTorch: attention, Transformer, RNN/LSTM/GRU, and models.

Each block is written from its equations (not wrapping torch's fused modules) and tested for parity
with torch's own implementation in tests/nn/test_parity.py. Only torch (and safetensors for
checkpoints) is imported.
"""
from tunelab.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from tunelab.nn.models import (
    GPT,
    SCRATCH_KINDS,
    EncoderDecoderTransformer,
    ModelOutput,
    RNNClassifier,
    TransformerClassifier,
    build_scratch_model,
    causal_lm_loss,
    load_scratch_model,
    save_scratch_model,
)
from tunelab.nn.positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from tunelab.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from tunelab.nn.transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "GPT", "GRU", "LSTM", "RNN", "SCRATCH_KINDS", "EncoderDecoderTransformer", "GRUCell",
    "LSTMCell", "LearnedPositionalEmbedding", "ModelOutput", "MultiHeadAttention", "RNNCell",
    "RNNClassifier", "RotaryEmbedding", "SinusoidalPositionalEncoding", "TransformerClassifier",
    "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder", "TransformerEncoderLayer",
    "build_scratch_model", "causal_lm_loss", "load_scratch_model", "save_scratch_model",
    "scaled_dot_product_attention", "sinusoidal_table",
]
