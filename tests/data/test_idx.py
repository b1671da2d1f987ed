import gzip
import struct

import numpy as np
import pytest

from noisecraft.data.idx import read_idx
from noisecraft.errors import NoisecraftError


def _idx(arr, ndim):
    return struct.pack(">I", 0x800 | ndim) + b"".join(struct.pack(">I", n) for n in arr.shape) + arr.tobytes()


def test_reads_plain_and_gzipped(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(arr, 3))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(arr, 3)))
    assert np.array_equal(read_idx(tmp_path / "a", 3), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz", 3), arr)


@pytest.mark.parametrize("data, match", [
    (_idx(np.zeros(5, np.uint8), 1), "not an idx file of 3-D"),            # labels where images were expected
    (b"\x00\x00", "not an idx file"),
    (_idx(np.zeros((2, 2, 2), np.uint8), 3)[:-1], "is truncated"),
    (_idx(np.zeros((2, 2, 2), np.uint8), 3) + b"\x00", "has trailing data"),
])
def test_rejects_bad_files_naming_them(tmp_path, data, match):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(NoisecraftError, match=match) as e:
        read_idx(path, 3)
    assert "bad-idx3-ubyte" in str(e.value)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 40)
    with pytest.raises(NoisecraftError, match="cannot read .*x.gz"):
        read_idx(path, 3)
