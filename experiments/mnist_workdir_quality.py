"""Classifier-FID of a trained MNIST workdir under several sampler settings (issue 13).

Scores the latest checkpoint of a run of ``python -m csm_jax.main`` (nothing is
trained): its recorded config and parameters come through `csm_jax.inference` (the
restore that --mode=sample uses), and each setting is that config with evaluation /
sampling overrides (`csm_jax.workdir.eval_config`: any other field is refused, as in
--mode=sample):

  --setting NAME=FIELD=VALUE[,FIELD=VALUE...]   (repeatable; "NAME=" is the recorded
                                                 config as it is; default: one such
                                                 setting, "recorded")
  --config.FIELD=VALUE                          (for every setting, before its own)

For example the former and the current sampler defaults of configs/mnist_made.py:

  python -m experiments.mnist_workdir_quality --workdir W --out /tmp/wq \\
    --setting "old=sampling.num_steps=10,sampling.step_lr=0.002" --setting "new="

Each setting draws --num_samples samples with the sampler the config asks for (the one
--mode=sample runs; the same random key, from --sample_seed, for every setting) and is
scored exactly as experiments.mnist_sample_quality scores its rows, with the same flags
and defaults (classifier, reference test[:5000], the floor row "data" of the next
--num_samples test images), so the numbers of the two compare: classifier-FID with its
bootstrap spread, mean intensity and on-pixel fraction next to the data's. Writes
OUT/results.json, OUT/samples.png (one row per setting) and OUT/samples/NAME.npy
after every setting, OUT/table.md at the end.
"""

import re

from experiments import common


# A comma that starts the next FIELD=VALUE (not one inside a tuple value).
_SPLIT = re.compile(r",\s*(?=[A-Za-z_][\w.]*=)")


def parse_setting(text: str):
  """(name, ['field=value', ...]) of 'NAME=FIELD=VALUE,FIELD=VALUE' ('NAME=': none)."""
  name, sep, body = text.partition("=")
  if not sep or not re.fullmatch(r"[\w.-]+", name):
    raise ValueError(f"--setting {text!r} must look like NAME=FIELD=VALUE[,FIELD=VALUE...] "
                     "or NAME= (NAME: letters, digits, _ . -)")
  return name, [o.strip() for o in _SPLIT.split(body) if o.strip()]


def parse_args(argv=None):
  p = common.parser(__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a trained MNIST run of csm_jax.main")
  p.add_argument("--setting", action="append", default=[],
                 help="NAME=FIELD=VALUE[,FIELD=VALUE...] (eval/sampling fields), repeatable")
  p.add_argument("--params", choices=tuple(common.PARAMS), default="ema",
                 help="EMA parameters, or the raw last iterate")
  p.add_argument("--sample_seed", type=int, default=None,
                 help="seed of the samplers' random key (default --seed + 3, as "
                      "mnist_sample_quality); unlike --seed it leaves the classifier as it is")
  common.add_sample_scoring_flags(p)
  args, ov = common.parse(p, argv)
  try:
    settings = [parse_setting(t) for t in (args.setting or ["recorded="])]
  except ValueError as e:
    p.error(str(e))
  names = [name for name, _ in settings]
  if len(set(names)) != len(names):
    p.error(f"--setting names must differ, got {names}")
  args.setting = dict(settings)
  return args, ov


common.parse_early(__name__, parse_args)  # --help and flag errors before JAX loads

import jax  # noqa: E402
from csm_jax import config_base  # noqa: E402
from csm_jax import image_quality as iq  # noqa: E402
from csm_jax import inference  # noqa: E402
from csm_jax import workdir as workdir_lib  # noqa: E402
from experiments import mnist_sample_quality as msq  # noqa: E402


def setting_configs(workdir: str, settings: dict, common_overrides=()) -> dict:
  """{name: config}: the workdir's recorded config with `common_overrides` (the
  --config.FIELD=value flags) and then each setting's overrides, checked (only
  eval/sampling fields, valid values) before anything is sampled."""
  recorded = config_base.load_workdir_config(workdir)
  configs = {}
  for name, overrides in settings.items():
    config = workdir_lib.eval_config(workdir, recorded, list(common_overrides) + overrides)
    config_base.validate(config)
    configs[name] = config
  return configs


def label(name: str, info: dict) -> str:
  """Row label: the setting's name and its sampler (T, step_lr and c = step_lr /
  sigma_min^2 for Langevin)."""
  if "T" not in info:
    return f"{name}: {info['sampler']}"
  c = info["step_lr"] / min(info["sigmas"]) ** 2
  return f"{name}: Langevin T={info['T']}, step_lr={info['step_lr']:g} (c={c:.2g})"


def run(args, overrides):
  workdir_lib.require_checkpoints(args.workdir)
  configs = setting_configs(args.workdir, args.setting, overrides["config"])
  r = msq.Run(args, overrides)
  log = r.log
  r.results["settings"] = args.setting
  inf = inference.build(config_base.load_workdir_config(args.workdir))
  if inf.arrays.shape != (28, 28, 1):
    raise ValueError(f"an MNIST workdir expected, got images of shape {inf.arrays.shape}")
  params, step = inference.restore(inf, args.workdir, common.PARAMS[args.params])
  log(f"restored step {step} ({args.params} parameters) from {args.workdir}")
  r.results["models"]["workdir"] = {"workdir": args.workdir, "steps": step,
                                    "params": args.params, "config": inf.config.to_dict()}
  r.title = f"{args.workdir}, step {step}: " + r.title
  clf, ref_stats, reference = msq.setup_scoring(r, inf.config.data, inf.arrays)

  key = jax.random.PRNGKey(args.seed + 3 if args.sample_seed is None else args.sample_seed)
  for name, config in configs.items():
    what = ", ".join(args.setting[name]) or "the recorded config"
    log(f"[{name}] sampling {args.num_samples} images with {what}")
    images, sinfo = msq.sample_row({"kind": "config"}, config, inf.model, params, inf.pre,
                                   args, key, log)
    r.add_row(name, label(name, sinfo), images,
              iq.quality_report(clf, images, ref_stats, reference),
              dict(sinfo, overrides=args.setting[name]))
  return r.finish()


def main(argv=None):
  return run(*parse_args(argv))


if __name__ == "__main__":
  main()
