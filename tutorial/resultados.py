"""Lo que deberías ver: ejecuta los cuadernos con sus ajustes completos y escribe RESULTADOS.md.

    .venv/bin/python tutorial/resultados.py            # todos (o: make tutorial)
    .venv/bin/python tutorial/resultados.py 02 03      # solo esas mañanas (las demás se conservan)

Cada cuaderno se ejecuta de principio a fin (sin ``HWL_TUTORIAL_QUICK``) contra un almacén de MLflow
temporal, en esta máquina; se mide su tiempo y se guardan las salidas de sus celdas marcadas
``concordancia`` (lo hecho a mano frente al proyecto) y ``resultado`` (los números y las gráficas de la
mañana): el texto en ``RESULTADOS.md``, las gráficas en ``resultados/``. Los cuadernos se guardan sin
salidas (diffs limpios); este fichero es lo que un lector debería obtener, regenerado con una orden.
"""

from __future__ import annotations

import base64
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

TUTORIAL = Path(__file__).resolve().parent
PAGE, FIGURES = TUTORIAL / "RESULTADOS.md", TUTORIAL / "resultados"
SHOWN = ("concordancia", "resultado")  #: the tags whose outputs are kept
START, END = "<!-- mañana {day} -->", "<!-- fin {day} -->"


def notebooks(days: list[str]) -> list[Path]:
    every = sorted(TUTORIAL.glob("[0-9][0-9]_*.ipynb"))
    unknown = set(days) - {path.name[:2] for path in every}
    if unknown:
        raise SystemExit(f"no hay cuaderno para la mañana {', '.join(sorted(unknown))}")
    return [path for path in every if not days or path.name[:2] in days]


def execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(TUTORIAL)}})
    started = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - started


def text_of(output) -> str:
    if output.get("output_type") == "stream" and output.get("name") == "stdout":
        return output.get("text", "")
    data = output.get("data", {})
    return data.get("text/plain", "") if "image/png" not in data else ""


def section(path: Path, notebook, seconds: float) -> str:
    day, lines = path.name[:2], [START.format(day=path.name[:2]), f"## {path.stem}", "",
                                 f"Tiempo con los ajustes completos: **{seconds:.0f} s**" + (f" ({seconds / 60:.1f} min)".replace(".", ",") if seconds >= 90 else "") + ".", ""]
    figure = 0
    for cell in notebook.cells:
        if cell.cell_type != "code" or not set(SHOWN) & set(cell.metadata.get("tags", [])):
            continue
        texts = [re.sub(r"\x1b\[[0-9;]*m", "", text_of(output)).rstrip() for output in cell.outputs]
        if any(texts):
            lines += ["```text", *[text for text in texts if text], "```", ""]
        for output in cell.outputs:
            if "image/png" in output.get("data", {}):
                figure += 1
                name = f"{path.stem}_{figure}.png"
                (FIGURES / name).write_bytes(base64.b64decode(output["data"]["image/png"]))
                lines += [f"![{path.stem}, figura {figure}](resultados/{name})", ""]
    return "\n".join([*lines, END.format(day=day)])


def merged(sections: dict[str, str]) -> str:
    """The page with these sections replaced, the others kept as they were."""
    old = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    kept = {match.group(1): match.group(0) for match in re.finditer(r"<!-- mañana (\d\d) -->.*?<!-- fin \1 -->", old, re.S)}
    kept.update(sections)
    header = ["# Resultados del tutorial con los ajustes completos", "",
              "Generado por `tutorial/resultados.py` (`make tutorial`) en una máquina de "
              f"{os.cpu_count()} núcleos ({platform.machine()}, Python {platform.python_version()}), con los datos incluidos "
              "(5.000 dígitos). Tus números pueden diferir en los últimos decimales en otra CPU; en esta, la misma "
              "semilla da los mismos números.", ""]
    return "\n".join([*header, *(kept[day] + "\n" for day in sorted(kept))])


def main(days: list[str]) -> int:
    FIGURES.mkdir(exist_ok=True)
    sections = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.environ.pop("HWL_TUTORIAL_QUICK", None)
        for path in notebooks(days):
            print(f"[tutorial] {path.name} ...", flush=True)
            for old in FIGURES.glob(f"{path.stem}_*.png"):
                old.unlink()
            notebook, seconds = execute(path)
            sections[path.name[:2]] = section(path, notebook, seconds)
            print(f"[tutorial] {path.name}: {seconds:.0f} s", flush=True)
            PAGE.write_text(merged(sections), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
