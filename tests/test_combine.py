"""`python -m raintools.views.combine`: several runs' CSVs into the size figures, on constructed
CSVs (a run folder per model, as the notebooks write them)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from raintools.errors import DataError  # noqa: E402
from raintools.views import combine as C  # noqa: E402
from raintools.views import plots as P  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_params_from_name():
    assert C.params_from_name("meta-llama/Llama-2-13b-chat-hf") == 13.0
    assert C.params_from_name("smollm2-135m") == pytest.approx(0.135)
    assert C.params_from_name("Qwen2.5-0.5B-Instruct") == 0.5
    assert C.params_from_name("LLaMA-2 70B") == 70.0
    assert C.params_from_name("gpt2") is None
    assert C.params_from_name("/models/my-model") is None


def _runs(tmp_path):
    """figures/ (embedded model: params_b in 01, none in 06), a 13B run named by its folder, a run
    whose size is only known from --params, and a paper row that must be ignored."""
    fig = tmp_path / "figures"
    (fig / "Llama-2-13b-chat-hf-cuda").mkdir(parents=True)
    (fig / "notebooks").mkdir()
    other = tmp_path / "elsewhere" / "mystery-cuda"
    other.mkdir(parents=True)
    pd.DataFrame([
        dict(model="SmolLM2-135M-Instruct", judge="votes", source="measured here", n=60, accuracy=0.5,
             strict=0.0, tie_rate=1.0, strict_lo=0.0, strict_hi=0.06, params_b=0.1348),
        dict(model="SmolLM2-135M-Instruct", judge="soft", source="measured here", n=60, accuracy=0.4,
             strict=0.4, tie_rate=0.0, strict_lo=0.28, strict_hi=0.53, params_b=0.1348),
        dict(model="LLaMA 7B", source="paper (reported)", accuracy=0.52, params_b=7),
    ]).to_csv(fig / C.SELF_EVAL_CSV, index=False)
    pd.DataFrame([
        dict(method="vanilla", n=40, harmless_rate=0.50, harmless_lo=0.35, harmless_hi=0.65,
             model="smollm2-135m", source="measured"),
        dict(method="rain", n=40, harmless_rate=0.55, harmless_lo=0.40, harmless_hi=0.69,
             model="smollm2-135m", source="measured"),
        dict(method="bon-2", n=40, harmless_rate=0.52, model="smollm2-135m", source="measured"),
        dict(method="vanilla", harmless_rate=0.644, model="LLaMA 7B", source="paper (reported, GPT-4 judge)"),
    ]).to_csv(fig / C.HARMLESS_CSV, index=False)
    pd.DataFrame([dict(model="Llama-2-13b-chat-hf", judge="votes", source="measured here", n=200,
                       accuracy=0.7, strict=0.62, tie_rate=0.16, strict_lo=0.55, strict_hi=0.69)]
                 ).to_csv(fig / "Llama-2-13b-chat-hf-cuda" / C.SELF_EVAL_CSV, index=False)
    pd.DataFrame([dict(method=m, n=100, harmless_rate=r, model="meta-llama/Llama-2-13b-chat-hf",
                       source="measured") for m, r in (("vanilla", 0.7), ("rain", 0.86))]
                 ).to_csv(fig / "Llama-2-13b-chat-hf-cuda" / C.HARMLESS_CSV, index=False)
    pd.DataFrame([dict(method=m, n=10, harmless_rate=r, model="mystery", source="measured")
                  for m, r in (("vanilla", 0.2), ("rain", 0.3))]).to_csv(other / C.HARMLESS_CSV, index=False)
    return fig, other


def test_combine_reads_each_run_and_sizes_it(tmp_path, capsys):
    fig, other = _runs(tmp_path)
    assert C.run_folders([fig, other]) == [fig, fig / "Llama-2-13b-chat-hf-cuda", other]
    out = tmp_path / "combined"
    written = C.combine([fig, other], out)
    assert set(written) == {"self_eval", "harmless"} and all(p.is_file() for p in written.values())
    acc = pd.read_csv(out / "combined_self_eval_by_size.csv")
    assert list(zip(acc.model, acc.judge, acc.params_b)) == [
        ("SmolLM2-135M-Instruct", "votes", 0.1348), ("SmolLM2-135M-Instruct", "soft", 0.1348),
        ("Llama-2-13b-chat-hf", "votes", 13.0)]                  # the paper's row is not a run
    assert acc.strict.tolist() == [0.0, 0.4, 0.62] and acc.tie_rate.tolist() == [1.0, 0.0, 0.16]
    harm = pd.read_csv(out / "combined_harmless_by_size.csv")
    # the embedded run's size comes from its own 01 CSV, the 13B's from its name; 'mystery' is
    # left out (and reported) until its size is given
    assert harm.model.tolist() == ["smollm2-135m", "meta-llama/Llama-2-13b-chat-hf"]
    assert harm.params_b.tolist() == [0.1348, 13.0]
    assert harm[["vanilla", "rain"]].values.tolist() == [[0.5, 0.55], [0.7, 0.86]]
    assert harm.rain_lo.iloc[0] == 0.40 and pd.isna(harm.rain_lo.iloc[1])
    assert "mystery" in capsys.readouterr().err
    C.combine([fig, other], out, params={"mystery": 3})
    assert pd.read_csv(out / "combined_harmless_by_size.csv").params_b.tolist() == [0.1348, 13.0, 3.0]


def test_combine_command_line(tmp_path, capsys):
    fig, other = _runs(tmp_path)
    out = tmp_path / "o"
    assert C.main([str(fig), str(other), "--out", str(out), "--params", "mystery=3"]) == 0
    assert (out / "combined_harmless_by_size.png").is_file()
    assert len(pd.read_csv(out / "combined_harmless_by_size.csv")) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    assert C.main([str(empty), "--out", str(out)]) == 2
    assert "no 01_self_eval_accuracy.csv" in capsys.readouterr().err
    assert C.main([str(tmp_path / "missing")]) == 2
    with pytest.raises(DataError):
        C._parse_params(["13"])


def test_size_plots_draw_every_run_on_a_log_axis(tmp_path):
    fig, other = _runs(tmp_path)
    harm = C.read_harmless([fig, fig / "Llama-2-13b-chat-hf-cuda"])
    ax = P.plot_harmless_by_size(harm)
    assert ax.get_xscale() == "log"
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None and not t.get_text()]
    assert len(arrows) == len(harm) + 4                       # one per run + the paper's four
    labels = " ".join(t.get_text() for t in ax.texts)
    assert "smollm2-135m\n50% → 55%" in labels and "Llama-2-13b-chat-hf\n70% → 86%" in labels
    acc = C.read_self_eval(C.run_folders([fig]))
    ax = P.plot_self_eval_by_size(acc)
    assert ax.get_xscale() == "log"
    labels = " ".join(t.get_text() for t in ax.texts)
    assert "0% right, 100% ties" in labels and "62% right, 16% ties" in labels
