"""Stand-in for SimpleITK, for benchmarks/gpu_check.py only: it satisfies `import SimpleITK` and nothing else.

Why it exists: nnU-Net 2.8 imports SimpleITK at module level on every path the segmenter stage takes (its
reader/writer registry, NibabelIO's own module, the preprocessor, the trainer's evaluation module), whether or
not SimpleITK reads anything. The GPU device machine has no SimpleITK, and its wheel (50.2 MiB) does not fit the
64 MiB carry beside the working tree (32.7 MiB). gpu_check.py sets `segmenter.image_reader_writer: NibabelIO`,
so that nnU-Net reads and writes the NIfTI files with nibabel, and puts this folder on the children's path only
where the real SimpleITK is missing (on the device) or in its CPU mode (so that CI runs the device's path). Any
use of an attribute fails loudly: a result can never come from this stand-in.
"""


def __getattr__(name):
    raise AttributeError(f"SimpleITK.{name}: this is benchmarks/standins/SimpleITK, a stand-in that only lets "
                         f"nnU-Net import; nothing may call SimpleITK in gpu_check (NibabelIO reads the NIfTI files)")
