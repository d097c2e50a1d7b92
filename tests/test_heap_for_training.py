"""Image training keeps its freed activation buffers in the heap instead of faulting them in.

Each check runs in a fresh interpreter: glibc's thresholds are process-wide, and the
comparison needs a process whose allocator still has its defaults.
"""

import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
pytestmark = pytest.mark.skipif(not GLIBC, reason="malloc tuning is glibc's")

# Trains ArmedImage on 512 random 3 x 68 x 68 crops (BBBC021's shape, 4 plates, 3 labels),
# once as a model that leaves the allocator alone and once as shipped, and prints the minor
# page faults per training step (after the first steps, once the buffers exist).
SCRIPT = textwrap.dedent(
    """
    import resource
    import numpy as np, torch
    from anndata import AnnData
    from lightning.pytorch.callbacks import Callback
    from armed_bio.model import ArmedImage

    torch.set_num_threads(1)

    class Faults(Callback):
        def __init__(self):
            self.counts = []
        def on_train_batch_end(self, *args):
            self.counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    rng = np.random.default_rng(0)
    adata = AnnData(np.zeros((512, 1), dtype=np.float32))
    adata.obsm["image"] = rng.normal(size=(512, 3, 68, 68)).astype(np.float32)
    adata.obs["batch"] = [f"p{i % 4}" for i in range(512)]
    adata.obs["label"] = [f"l{i % 3}" for i in range(512)]
    out = []
    for keep in (False, True):
        ArmedImage._keep_heap_in_training = keep
        data = adata.copy()
        ArmedImage.setup_anndata(data, batch_key="batch", labels_key="label")
        model = ArmedImage(data, seed=0)
        faults = Faults()
        model.train(max_epochs=3, batch_size=128, train_size=1.0, accelerator="cpu",
                    enable_progress_bar=False, callbacks=[faults])
        c = faults.counts[2:]
        out.append((c[-1] - c[0]) / (len(c) - 1))
    print(*out)
    """
)


def test_image_training_reuses_freed_buffers_instead_of_faulting_pages_in():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    default, kept = (float(v) for v in proc.stdout.split()[-2:])
    # Measured here: about 11,500 faults per step with glibc's defaults, under 10 kept.
    assert default > 1000
    assert kept < default / 5


def test_the_tuning_hands_the_free_pages_back_when_training_ends():
    script = textwrap.dedent(
        """
        import numpy as np
        from armed_bio._malloc import heap_kept_for_training

        def rss_mib():
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024

        start = rss_mib()
        with heap_kept_for_training() as tuned:
            blocks = [np.ones(2_000_000) for _ in range(12)]  # 12 x 16 MB from the heap
            del blocks
            inside = rss_mib()
        print(tuned, inside - start, rss_mib() - start)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned, inside, after = proc.stdout.split()
    assert tuned == "True"
    assert float(inside) > 150  # freed, but kept at the heap's top during training
    assert float(after) < 20  # handed back on leaving


def test_inference_passes_map_their_large_blocks_so_freeing_them_returns_the_pages():
    """Chunks freed between small kept results stay resident unless mapped on their own."""
    script = textwrap.dedent(
        """
        import numpy as np
        from armed_bio._malloc import large_blocks_mapped

        def rss_mib():
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024

        def chunks_and_results():
            chunks, results = [], []
            for _ in range(12):
                chunks.append(np.ones(1_000_000))  # an 8 MB chunk
                results.append(np.ones(1_000))  # a small result that outlives it
            del chunks
            return results

        big = np.ones(4_000_000)
        del big  # glibc raises its mmap threshold: 8 MB blocks come from the heap from now on
        start = rss_mib()
        kept = chunks_and_results()
        heap = rss_mib() - start
        start = rss_mib()
        with large_blocks_mapped() as tuned:
            kept += chunks_and_results()
        print(tuned, heap, rss_mib() - start)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned, heap, mapped = proc.stdout.split()
    assert tuned == "True"
    assert float(heap) > 20  # 30 MB here: the freed chunks' pages stay resident between the results
    assert float(mapped) < 5  # each chunk was its own mapping, handed back when freed
