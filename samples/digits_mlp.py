"""Architecture of the sample digits MLP used by relu-doctor's samples.

Imported by the CLI as ``--arch samples/digits_mlp.py:build_mlp``; imports only torch.
Input: 64 features (8x8 digits, pixel/16 then standardised). Output: 10 logits.
"""

from torch import nn


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(128, 128)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.act1(self.fc1(x))
        x = self.act2(self.fc2(x))
        return self.fc3(x)


def build_mlp() -> nn.Module:
    """Return an untrained 64 -> 128 -> 128 -> 10 ReLU MLP."""
    return DigitsMLP()
