"""The module's metadata texts: help, acknowledgement, contributors and the documentation link (translated with
Slicer's `tr` inside Slicer). The extension's CMakeLists.txt carries the same homepage and contributors."""

from __future__ import annotations

from VentricleSynthLib.slicer_glue.compatibility import MINIMUM_SLICER
from VentricleSynthLib.slicer_glue.i18n import tr as _

PAPER = ('Ruschke et al. 2024, "Guided Synthesis of Labeled Brain MRI Data Using Latent Diffusion Models for '
         'Segmentation of Enlarged Ventricles", arXiv:2411.01351')
# A placeholder until the repository is published (README, "3D Slicer"); CMakeLists.txt's EXTENSION_HOMEPAGE.
DOCUMENTATION_URL = "https://www.example.com/VentricleSynth"
CONTRIBUTORS = ["VentricleSynth developers (VentricleSynth project)"]


def help_text() -> str:
    return _("""
Synthesise labelled T1-weighted brain MRI with a requested ventricle volume, and measure the ventricles of a scan.
<ul>
<li><b>Generate</b>: a volume-conditioned latent diffusion model draws a label map whose ventricular system
(lateral, inferior lateral, third and fourth ventricles) has the requested volume in mL; a SPADE latent diffusion
model turns it into an MRI. Each sample becomes a volume named <i>SYNTHETIC ...</i> (tagged as synthetic) and a
segmentation with named, coloured ventricles and a 3-D surface.</li>
<li><b>Segment</b>: the bundled nnU-Net model segments the ventricles of the selected volume; volumes in mL are
listed per ventricle and in total, and kept beside the segmentation as a table (exportable as CSV).</li>
<li><b>Models</b>: the bundled models, their checksums, and where to put other bundles (e.g. trained on a GPU
with <tt>training/train.py</tt>).</li>
</ul>
The networks run in a separate process (Slicer stays responsive; Cancel stops it). Python packages (PyTorch,
MONAI, nnU-Net) are installed on first use after asking. Synthetic images are for research and
education, not for diagnosis.
""") + _("Requires 3D Slicer {version} or later.").format(version="{}.{}".format(*MINIMUM_SLICER)) + \
        ' <a href="{url}">{text}</a>'.format(url=DOCUMENTATION_URL, text=_("Documentation"))


def acknowledgement_text() -> str:
    return _("Implements the method of") + " " + PAPER + _(""":
a mask latent diffusion model conditioned on ventricular volume with classifier-free guidance, a SPADE image
latent diffusion model, and an nnU-Net v2 ventricle segmenter. Built on MONAI (generative networks), nnU-Net v2
and PyTorch. Label numbers follow FreeSurfer/SynthSeg.""")
