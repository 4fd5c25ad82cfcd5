import pytest
import torch

from volmae.utils.runtime import amp_dtype, autocast, cpu_has_bf16_units

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "vendor,flags,units",
    [
        ("GenuineIntel", "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True),  # Sapphire Rapids and later
        ("GenuineIntel", "fpu avx2 avx512f avx512_bf16", False),  # Emerald Rapids with AMX hidden: measured 0.59x
        ("AuthenticAMD", "fpu avx2 avx512f avx512_bf16", True),  # Zen 4: measured 1.59x
        ("AuthenticAMD", "fpu avx2 fma", False),  # Zen 3
    ],
)
def test_bf16_units_are_read_from_the_cpu_flags(tmp_path, vendor, flags, units):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_bf16_units(str(info)) is units


def test_no_cpuinfo_means_no_bf16_units(tmp_path):
    assert cpu_has_bf16_units(str(tmp_path / "absent")) is False


def test_the_cpu_autocasts_only_when_asked():
    assert amp_dtype(CPU) is None and amp_dtype(CPU, cpu_bf16=True) is torch.bfloat16
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with autocast(CPU, True):
        assert (x @ w).dtype == torch.float32  # amp alone is CUDA-only
    with autocast(CPU, True, cpu_bf16=True):
        assert (x @ w).dtype == torch.bfloat16
    with autocast(CPU, False, cpu_bf16=True):
        assert (x @ w).dtype == torch.float32  # enabled=False wins
