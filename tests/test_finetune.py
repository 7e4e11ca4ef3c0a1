"""Fine-tuning from torchvision-layout weights: the flags win, the run records the real model, and BatchNorm's
running statistics follow the new data (torchvision's momentum 0.01 left a one-epoch fine-tune at chance)."""
import logging

import pytest
import torch
import yaml
from torch.optim.swa_utils import update_bn

import mobilenetv3
from mobilenetv3.build import build_datasets, preprocessing_for
from mobilenetv3.config import load_config
from mobilenetv3.convert import to_torchvision
from mobilenetv3.data import eval_loader
from mobilenetv3.engine import evaluate
from mobilenetv3.errors import UsageError
from mobilenetv3.weights import model_from_weights, read_weights

DATA = dict(dataset="synthetic", num_classes=2, synthetic_samples=192, image_size=32, batch_size=16,
            model="mobilenetv3_small", width_mult=0.5, workers=0, progress=False, transform="none", seed=5)


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    """A torchvision state dict of a trained model whose BatchNorm statistics come from other data (shifted),
    as ImageNet statistics are for a new data set."""
    folder = tmp_path_factory.mktemp("finetune")
    source = mobilenetv3.train(None, run_dir=str(folder / "source"), epochs=4, warmup_epochs=0, lr=0.1,
                               bn_momentum=0.3, **DATA)
    state = to_torchvision(dict(read_weights(source.checkpoint).state_dict))
    generator = torch.Generator().manual_seed(0)
    for key in state:
        if key.endswith("running_mean"):
            state[key] = state[key] + torch.randn(state[key].shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = state[key] * 4
    torch.save(state, folder / "tv.pth")
    return folder / "tv.pth"


def accuracy_with_recomputed_statistics(path) -> float:
    """The reference: the same weights, BatchNorm statistics recomputed on the training split."""
    model = model_from_weights(read_weights(path))
    config = load_config(None, DATA)
    train, val = build_datasets(config.data, config.run.seed, 2)
    pre = preprocessing_for(config.data, train, 3)
    update_bn(eval_loader(train, pre, batch_size=16), model)
    return evaluate(model, eval_loader(val, pre, batch_size=64), num_classes=2, device=torch.device("cpu"))["top1"]


def test_a_short_finetune_reaches_the_accuracy_of_recomputed_statistics(torchvision_weights, tmp_path):
    reference = accuracy_with_recomputed_statistics(torchvision_weights)
    assert reference >= 0.9  # the weights are good; only their statistics are off
    tuned = mobilenetv3.train(None, run_dir=str(tmp_path / "run"), pretrained=str(torchvision_weights), epochs=4,
                              warmup_epochs=0, lr=0.01, **DATA)
    assert tuned.top1 >= reference - 0.03, (tuned.top1, reference)  # with momentum 0.01: 47.9% (one class)


@pytest.fixture(scope="module")
def untrained_torchvision_weights(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("tv") / "tv_small.pth"
    torch.save(torchvision.models.mobilenet_v3_small(width_mult=0.5, num_classes=2).state_dict(), path)
    return path


def test_flags_win_over_the_weights_and_the_run_records_the_real_model(untrained_torchvision_weights, tmp_path,
                                                                        caplog):
    torchvision_weights = untrained_torchvision_weights
    with caplog.at_level(logging.INFO, logger="mobilenetv3"):
        run = mobilenetv3.train(None, run_dir=str(tmp_path / "given"), pretrained=str(torchvision_weights),
                                epochs=1, bn_eps=1e-5, bn_momentum=0.05, **DATA)
    saved = torch.load(run.checkpoint, weights_only=True)
    assert (saved["model_kwargs"]["bn_eps"], saved["model_kwargs"]["bn_momentum"]) == (1e-5, 0.05)
    assert "bn_eps 1e-05 (given; the weights were made with 0.001)" in caplog.text
    assert "bn_momentum 0.05 (given; torchvision trains with 0.01)" in caplog.text
    run = mobilenetv3.train(None, run_dir=str(tmp_path / "implied"), pretrained=str(torchvision_weights), epochs=1,
                            **DATA)
    recorded = yaml.safe_load((tmp_path / "implied" / "config.yaml").read_text())["model"]
    saved = torch.load(run.checkpoint, weights_only=True)
    assert saved["model_kwargs"]["bn_eps"] == recorded["bn_eps"] == 1e-3  # the weights' eps, written down
    assert saved["model_kwargs"]["bn_momentum"] == recorded["bn_momentum"] == 0.1  # PyTorch's, as timm's


def test_a_shape_given_against_the_weights_is_refused(untrained_torchvision_weights, tmp_path):
    torchvision_weights = untrained_torchvision_weights
    with pytest.raises(UsageError, match="--width-mult is 1.0, but the pretrained weights .* have width_mult 0.5"):
        mobilenetv3.train(None, run_dir=str(tmp_path / "run"), pretrained=str(torchvision_weights),
                          **dict(DATA, width_mult=1.0))
    assert not (tmp_path / "run").exists()
