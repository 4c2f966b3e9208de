r"""Convert T5 v1.1 checkpoints between transformers and hyperflax.

  python -m hyperflax.convert hf-to-flax --hf DIR --out DIR
  python -m hyperflax.convert flax-to-hf --checkpoint DIR --out DIR [--dtype bfloat16]

hf-to-flax writes `DIR/config.json` and an orbax checkpoint `DIR/params`;
flax-to-hf also takes a training workdir whose downstream T5 was trained
(HyperT5+, T5-MTF: its `downstream/` export). flax-to-hf writes
`config.json` + `model.safetensors` that
`transformers.T5ForConditionalGeneration.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hyperflax import checkpoints
from hyperflax.model import T5Config
from hyperflax.model import hf


def hf_to_flax(hf_dir: str, out_dir: str) -> str:
  config = T5Config.from_json_file(f'{hf_dir}/config.json')
  params, dtype = hf.hf_to_params(hf_dir, config)
  checkpoints.save_params(out_dir, params, config)
  return dtype


def flax_to_hf(checkpoint_dir: str, out_dir: str, dtype: str = 'float32') -> None:
  from hyperflax.workdir import Workdir, as_path
  wd = Workdir(checkpoint_dir)
  if wd.checkpoints.is_dir() or wd.run_path.exists():  # a training workdir, not a model dir
    if checkpoints.is_params_checkpoint(wd.path / 'downstream'):  # HyperT5+/T5-MTF export
      checkpoint_dir = str(wd.path / 'downstream')
    else:
      init_from = (wd.read_config() or {}).get('model', {}).get('init_from', '')
      raise ValueError(
          f'{checkpoint_dir} is a training workdir whose downstream T5 was not trained'
          + (f': it is {init_from} (already a model directory)' if init_from else '')
          + '; `python -m hyperflax.hypertune --checkpoint WORKDIR --examples F --out A '
          '--export-downstream DIR` writes the T5 its adapters fit')
  if not as_path(f'{checkpoint_dir}/config.json').exists():
    raise FileNotFoundError(f'{checkpoint_dir}: no config.json (a `hyperflax.convert '
                            'hf-to-flax` output directory has config.json and params/)')
  config = T5Config.from_json_file(f'{checkpoint_dir}/config.json')
  if not checkpoints.is_params_checkpoint(checkpoint_dir):
    raise FileNotFoundError(f'{checkpoint_dir}: no params/ orbax checkpoint (write one with '
                            '`python -m hyperflax.convert hf-to-flax`)')
  hf.params_to_hf(checkpoints.restore_params(checkpoint_dir), config, out_dir, dtype)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m hyperflax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  a = sub.add_parser('hf-to-flax', help='transformers directory -> orbax checkpoint')
  a.add_argument('--hf', required=True, help='directory with config.json + model.safetensors')
  a.add_argument('--out', required=True)
  b = sub.add_parser('flax-to-hf', help='orbax checkpoint -> transformers directory')
  b.add_argument('--checkpoint', required=True, help='directory written by hf-to-flax')
  b.add_argument('--out', required=True)
  b.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  for p in (a, b):
    p.add_argument('--verbose', '--debug', action='store_true',
                   help='tracebacks and library INFO logs')
  args = parser.parse_args(argv)
  from hyperflax import cli
  verbose = args.verbose or cli.verbose_requested([])
  cli.setup_logging(verbose, logging.WARNING)

  def body():
    if args.command == 'hf-to-flax':
      dtype = hf_to_flax(args.hf, args.out)
      print(f'wrote {args.out} (source dtype {dtype}, stored as float32)')
    else:
      flax_to_hf(args.checkpoint, args.out, args.dtype)
      print(f'wrote {args.out}/config.json and {args.out}/model.safetensors ({args.dtype})')
    return 0
  return cli.guard(body, verbose, 'hyperflax.convert')


if __name__ == '__main__':
  sys.exit(main())
