"""Parity with pytorch-grad-cam (``pip install grad-cam``, not a dependency: skipped where absent).

Same model, input, layers and targets: layerscope's maps against grad-cam's own per-layer CAM
(``get_cam_image`` on the activations and gradients it captured, then its ReLU) and against its final
output (min-max scaled, resized and scaled again, which layerscope leaves to ``Maps.upsample``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pgc = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (pip install grad-cam) is not installed")

import layerscope as ls  # noqa: E402

PAIRS = [("GradCAM", "gradcam", {}), ("GradCAMPlusPlus", "gradcam_pp", {}), ("HiResCAM", "hirescam", {}),
         ("XGradCAM", "xgradcam", {}), ("LayerCAM", "layercam", {}), ("EigenCAM", "eigencam", {"centred": True})]


@pytest.fixture(scope="module")
def resnet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.slow
@pytest.mark.parametrize("theirs,ours,options", PAIRS, ids=[p[0] for p in PAIRS])
def test_maps_equal_pytorch_grad_cam(resnet, theirs, ours, options):
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    classes = [3, 281]
    layers = {"layer3": resnet.layer3, "layer4": resnet.layer4}
    bb = ls.wrap(resnet, layers=list(layers), img_size=128)
    target = classes if ours != "eigencam" else None
    m = ls.maps(bb, x, method=ours, target=target, **options)
    for name, module in layers.items():
        with getattr(pgc, theirs)(model=resnet, target_layers=[module]) as cam:
            final = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
            store = cam.activations_and_grads
            act = store.activations[0].numpy()
            grad = store.gradients[0].numpy() if store.gradients else None
            raw = np.maximum(cam.get_cam_image(x, module, None, act, grad, False), 0)
        mine = m[name][:, 0]
        if ours == "eigencam":  # grad-cam leaves the singular vector's sign as the SVD gives it; ours is fixed
            from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

            flipped = np.maximum(-get_2d_projection(act), 0)
            raw = np.stack([r if np.abs(r - o).max() <= np.abs(f - o).max() else f
                            for r, f, o in zip(raw, flipped, mine)])
        scale = np.abs(raw).max()
        assert scale > 0
        np.testing.assert_allclose(mine, raw, atol=1e-5 * scale, rtol=0)
        if ours != "eigencam":  # the final picture: grad-cam's own scaling, resize and rescaling of our map
            np.testing.assert_allclose(scale_cam_image(scale_cam_image(mine, (128, 128))), final, atol=1e-4)
