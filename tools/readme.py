"""Write README.md from nbs/index.ipynb, or check that it is up to date (--check).

nbdev makes README.md with Quarto (`nbdev_readme`), which cannot be installed on every machine this project runs on;
this renders the same notebook the simple way: markdown cells as they are, code cells (without `#|` directives, and
without cells marked `#| hide`) as Python blocks, followed by their saved text output."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTICE = '<!-- Generated from nbs/index.ipynb by tools/readme.py; edit the notebook, then run `make readme`. -->\n\n'


def _text(cell_or_output, key='source'):
    v = cell_or_output.get(key, '')
    return ''.join(v) if isinstance(v, list) else v


def _outputs(cell):
    for o in cell.get('outputs', []):
        text = _text(o, 'text') if o.get('output_type') == 'stream' else _text(o.get('data', {}), 'text/plain')
        if text.strip(): yield text.rstrip('\n')


def render(nb_path=ROOT/'nbs'/'index.ipynb'):
    "The README text for the notebook at `nb_path`."
    parts = []
    for cell in json.loads(Path(nb_path).read_text())['cells']:
        src = _text(cell)
        if cell['cell_type'] == 'markdown': parts.append(src.strip())
        elif cell['cell_type'] == 'code':
            lines = src.splitlines()
            if any(l.strip().replace(' ', '') in ('#|hide', '#|include:false') for l in lines): continue
            code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
            if code: parts.append(f"```python\n{code}\n```")
            parts += [f"```\n{o}\n```" for o in _outputs(cell)]
    return NOTICE + '\n\n'.join(p for p in parts if p) + '\n'


def main(argv):
    readme, text = ROOT/'README.md', render()
    if '--check' in argv:
        if readme.read_text() != text:
            print("README.md is out of step with nbs/index.ipynb: run `make readme` (python tools/readme.py) and commit it")
            return 1
        print("README.md matches nbs/index.ipynb")
        return 0
    readme.write_text(text)
    print(f"wrote {readme}")
    return 0


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
