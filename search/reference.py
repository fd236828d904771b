"""Hand-designed reference models, trained with the same code as a searched genotype.

A reference model sets every search result beside a known design on accuracy and
latency. `create_reference_model` is the one place that builds them by name.
"""

from __future__ import annotations

import torch
from torch import nn

from sleepnas.runtime.errors import SleepnasError


class TinySleepNet(nn.Module):
    """A small CNN + LSTM sleep stager after TinySleepNet (Supratak & Guo 2020).

    The layers follow the published model: a wide first convolution (128 filters,
    kernel ``sfreq / 2`` = 50, stride ``sfreq / 16`` = 6), batch norm and ReLU, max
    pooling by 8, dropout 0.5, three convolutions (128 filters, kernel 8), max
    pooling by 4, dropout 0.5, a 128-unit LSTM and a linear classifier. On a
    3000-sample window the convolutions leave a sequence of 16 steps of 128 features.

    NOTE: the published model runs its LSTM across a sequence of 20 consecutive
    windows of one EEG channel. Here the LSTM runs over the feature sequence inside
    one window, and the first convolution takes every input channel, so the model
    scores each window on its own like a searched network does.

    Parameters
    ----------
    n_chans : int
        Input channels.
    n_times : int
        Samples per window; must leave at least one step after the pooling.
    n_classes : int
        Output classes.
    n_filters : int
        Filters of every convolution.
    lstm_hidden : int
        Hidden units of the LSTM.
    dropout : float
        Dropout probability after each pooling and before the classifier.

    References
    ----------
    A. Supratak and Y. Guo, "TinySleepNet: An Efficient Deep Learning Model for Sleep
    Stage Scoring based on Raw Single-Channel EEG", 42nd Annual International
    Conference of the IEEE Engineering in Medicine & Biology Society (EMBC), 2020.
    """

    def __init__(self, n_chans: int = 7, n_times: int = 3000, n_classes: int = 5, *,
                 n_filters: int = 128, lstm_hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        for name, value in (("n_chans", n_chans), ("n_times", n_times), ("n_classes", n_classes),
                            ("n_filters", n_filters), ("lstm_hidden", lstm_hidden)):
            if int(value) < 1:
                raise SleepnasError(f"invalid TinySleepNet {name} {value!r}: expected an integer >= 1")
        self.n_chans, self.n_times, self.n_classes = int(n_chans), int(n_times), int(n_classes)

        # Padding (kernel - stride) / 2 gives ceil(n_times / 6) steps, as TensorFlow's
        # "same" padding of the published model does.
        first = [nn.Conv1d(n_chans, n_filters, kernel_size=50, stride=6, padding=22, bias=False),
                 nn.BatchNorm1d(n_filters), nn.ReLU(inplace=True),
                 nn.MaxPool1d(8, 8, ceil_mode=True), nn.Dropout(dropout)]
        middle = []
        for _ in range(3):
            # "Same" padding of an even kernel: 3 samples before, 4 after.
            middle += [nn.ConstantPad1d((3, 4), 0.0),
                       nn.Conv1d(n_filters, n_filters, kernel_size=8, bias=False),
                       nn.BatchNorm1d(n_filters), nn.ReLU(inplace=True)]
        last = [nn.MaxPool1d(4, 4, ceil_mode=True), nn.Dropout(dropout)]
        self.features = nn.Sequential(*first, *middle, *last)
        self.n_steps = self.feature_steps(self.n_times)
        if self.n_steps < 1:
            raise SleepnasError(f"invalid TinySleepNet n_times {n_times}: a window of fewer than "
                                f"{self.min_n_times()} samples leaves no step after the pooling")

        self.lstm = nn.LSTM(n_filters, lstm_hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(lstm_hidden, n_classes)

    @staticmethod
    def feature_steps(n_times: int) -> int:
        """Return the length of the feature sequence the LSTM receives for ``n_times`` samples."""
        steps = (n_times + 2 * 22 - 50) // 6 + 1
        steps = -(-steps // 8)
        return -(-steps // 4) if steps > 0 else 0

    @staticmethod
    def min_n_times() -> int:
        """Return the shortest window, in samples, the model accepts."""
        return 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows ``(batch, n_chans, n_times)`` to logits ``(batch, n_classes)``."""
        features = self.features(x).transpose(1, 2)
        output, _ = self.lstm(features)
        return self.classifier(self.dropout(output[:, -1]))


#: Reference models by the name ``--model`` takes.
REFERENCE_MODELS: dict[str, type[nn.Module]] = {"tinysleepnet": TinySleepNet}


def create_reference_model(name: str, n_chans: int, n_times: int, n_classes: int) -> nn.Module:
    """Build the reference model called ``name`` for the given input and classes.

    Raises
    ------
    SleepnasError
        If ``name`` is not a known reference model; the message lists the known ones.
    """
    cls = REFERENCE_MODELS.get(name)
    if cls is None:
        known = ", ".join(repr(k) for k in sorted(REFERENCE_MODELS))
        raise SleepnasError(f"unknown reference model {name!r}: expected one of {known}")
    return cls(n_chans=n_chans, n_times=n_times, n_classes=n_classes)
