"""`bench codecs`: the codec comparison and the many-readers measurement, on a few clips."""

from bench.store import bench_codecs, bench_concurrent_reads


def test_codec_comparison_and_concurrent_readers(tmp_path):
    result = bench_codecs(clips=4, codecs=["float16", "q32-lz4"], workers=1, reads=20, repeats=1,
                          out=str(tmp_path), references=False)
    f16, q32 = result["codecs"]["float16"], result["codecs"]["q32-lz4"]
    assert f16["share_of_float16"] == 1.0 and 0.3 < q32["share_of_float16"] < 0.7
    # errors against fbank computed by the bench itself, not read from any store
    assert 0 < f16["max_abs_error"] <= 2**-8 and 2**-8 < q32["max_abs_error"] <= 1 / 64
    assert f16["reads"]["median"] > 0 and q32["build_clips_per_s"] > 0
    rates = bench_concurrent_reads(q32["store"], processes=(1, 2), reads=20, repeats=1)
    assert set(rates) == {1, 2} and all(r["per_process"] > 0 and r["total"] >= r["per_process"] for r in rates.values())
