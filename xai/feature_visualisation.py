"""What a classification head has learned: a picture optimised to raise its class (activation maximisation,
Olah et al. 2017), and the real picture patches the same class responds to most.

Written here because no well-kept library has it for this torch: captum 0.9 ships no `optim` module, and
torch-lucent pins kornia<=0.4.1 and pulls test tools in as run-time dependencies. The picture is parametrised in
a decorrelated (Fourier) space whose high frequencies start small, and every step sees it jittered and rescaled,
so what rises is the class and not adversarial pixel noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

JITTER = 8  # pixels a step may shift the picture by
SCALES = (0.9, 1.1)  # range a step may rescale it by
DECAY = 1.0  # spectrum scale 1 / frequency**DECAY: natural pictures' amplitude falls about so


def _spectrum_scale(size: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    return 1.0 / torch.clamp(torch.sqrt(fx ** 2 + fy ** 2), min=1.0 / size) ** DECAY


# The square root of natural pictures' colour covariance (ImageNet's, as measured for Lucid): the optimised
# channels are decorrelated colours, so a step moves a natural mix of R, G and B rather than one primary.
COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_SQRT = COLOUR_SQRT / COLOUR_SQRT.norm(dim=0).max()


def _picture(spectrum: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier coefficients [3, size, size//2+1, 2] of decorrelated colours -> picture [1, 3, size, size] in 0..1."""
    coefficients = torch.view_as_complex(spectrum) * scale
    decorrelated = torch.fft.irfft2(coefficients, s=(size, size), norm="ortho")
    return torch.sigmoid(torch.einsum("ck,khw->chw", COLOUR_SQRT, decorrelated))[None]


def visualise_class(classifier: nn.Module, target: int, size: int, mean: tuple, std: tuple, steps: int = 192,
                    lr: float = 0.05, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
    """A picture (uint8 [size, size, 3]) that raises `classifier`'s class `target` (its log-probability, so the
    other classes fall), and the class's probability on it. `classifier` maps a normalised batch to logits."""
    generator = torch.Generator().manual_seed(seed)
    scale = _spectrum_scale(size)
    spectrum = (torch.randn((3, size, size // 2 + 1, 2), generator=generator) * 0.01).requires_grad_(True)
    optimiser = torch.optim.Adam([spectrum], lr=lr)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for step in range(steps):
        picture = _picture(spectrum, scale, size)
        dy, dx = (int(v) for v in torch.randint(-JITTER, JITTER + 1, (2,), generator=generator))
        factor = float(torch.empty(1).uniform_(*SCALES, generator=generator))
        moved = torch.roll(F.pad(picture, (JITTER,) * 4, mode="reflect"), (dy, dx), dims=(-2, -1))
        moved = F.interpolate(moved, scale_factor=factor, mode="bilinear", align_corners=False)
        moved = F.interpolate(moved, size=(size, size), mode="bilinear", align_corners=False) \
            if moved.shape[-1] < size else _centre_crop(moved, size)
        loss = -F.log_softmax(classifier((moved - m) / s), dim=-1)[0, target]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step)
    with torch.no_grad():
        picture = _picture(spectrum, scale, size)
        probability = float(classifier((picture - m) / s).softmax(-1)[0, target])
    return (picture[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), probability


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def strongest_cells(class_maps: torch.Tensor, count: int) -> list[tuple[int, int, int]]:
    """(picture, row, column) of the `count` highest cells of class maps [N, h, w], at most one per picture."""
    peaks = class_maps.flatten(1).max(dim=1)
    order = torch.argsort(peaks.values, descending=True)[:count]
    width = class_maps.shape[-1]
    return [(int(i), int(peaks.indices[i]) // width, int(peaks.indices[i]) % width) for i in order]
