"""Security evaluation: every scheme's ciphertext-only attack, measured the same way, not
asserted.

For each scheme of ``timm_ppconvmixer.attacks.SCHEME_ATTACKS`` (``--schemes``, ``all`` for every
one), each setting (``--settings``: Fashion-MNIST 28/4, upscaled 56/4 and 56/7, photographs
224/16, 224/32 and 224/16 in grayscale; ``benchmarks/security/data.py``), each N (``--ns``) and
``--keys`` seeded keys, each with its own random sample of the data: the provider's attack
(the scheme's registry entry), the key parts it recovers (the scheme's own scorer, up to what
no ciphertext-only attacker can decide), exact images, PSNR and SSIM of the reconstructions,
the top-1 of a plain-domain classifier on them (Fashion-MNIST) and the attack's time; median
and worst over keys. ``--regime`` says which images are judged (``benchmarks/security/runs.py``):
``sample`` (the first 2,000 Fashion-MNIST images / 100 photographs of each key's sample at
every N), ``attacked`` (the attacked images themselves) or ``few-images`` (every attacked image,
also scored up to the best global symmetry). ``--priors`` runs the attack with the reference
prior (public images of the same kind) and/or the generic one; ``--extras`` adds the block-wise
scheme's known-plaintext attack, more sample draws under one key and what the shipped demo
model's weights reveal.

The numbers of the security pages, each from one command (``--quick``: smaller N, a smoke
run; ``--keys``, ``--ns``, ``--settings`` narrow any of them):

    # docs/security.md "Across schemes" and the README's table; docs/security_le.md,
    # docs/security_ele.md, docs/security_etc.md (their Fashion-MNIST and photograph tables)
    python benchmarks/security_eval.py --schemes all --out outputs/security_schemes
    # docs/security.md "Measured results": block-wise table, known plaintext, demo model, draws
    python benchmarks/security_eval.py --regime attacked --settings all --extras all \\
        --out outputs/security_eval
    # docs/security_le.md: the upper halves alone (and photographs: --settings photo224)
    python benchmarks/security_eval.py --schemes le --settings fmnist28 --regime attacked \\
        --out outputs/security_le
    # docs/security_pe.md: PE with one key and per image, with both priors
    python benchmarks/security_eval.py --schemes pe pe-per-image --priors reference generic \\
        --out outputs/security_pe
    # docs/security_few_images.md
    python benchmarks/security_eval.py --regime few-images --out outputs/few_images

Every run is kept in ``OUT/runs_<scheme>.json``, written after every run and resumed run by
run (a stopped evaluation goes on where it stopped; runs measured in another checkout can be
copied in). ``OUT/security_eval.json`` holds the runs, the aggregated tables and the extras,
``OUT/security_eval.md`` (also printed) the markdown tables; both files, like every runs file,
record the command line, git commit, date and machine that made them, and are written
atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from security import extras, tables  # noqa: E402
from security.data import (  # noqa: E402
    ALIASES,
    PRIORS,
    SETTINGS,
    Setting,
    canonical,
    load_setting,
    pool_size,
)
from security.provenance import provenance, stamp, write_json, write_text  # noqa: E402
from security.runs import (  # noqa: E402
    KEY_SEED,
    REGIMES,
    SCORED_PER_IMAGE,
    RunsFile,
    default_ns,
    run_group,
    run_ns,
    scheme_names,
    scored_images,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--out", default="outputs/security_eval", help="folder of every output")
    p.add_argument(
        "--schemes", nargs="+", default=["blockwise"],
        help="'all' or scheme names of SCHEME_ATTACKS (default: blockwise)",
    )  # fmt: skip
    p.add_argument(
        "--settings", nargs="+", default=["fmnist28_4", "photo224_16"],
        choices=[*SETTINGS, *ALIASES, "all"], metavar="SETTING",
        help=f"{', '.join(SETTINGS)} or all (default: fmnist28_4 photo224_16; fmnist28 and "
        "photo224 are short for fmnist28_4 and photo224_16)",
    )  # fmt: skip
    p.add_argument(
        "--regime", default="sample", choices=list(REGIMES),
        help="which images each run judges (default: sample)",
    )  # fmt: skip
    p.add_argument(
        "--ns", nargs="+", type=int, help="these N instead of each setting's list (the regime's)"
    )
    p.add_argument("--keys", type=int, default=5, help="seeded keys per N (default: 5)")
    p.add_argument("--quick", action="store_true", help="smaller N (a smoke run)")
    p.add_argument(
        "--scored", type=int, help="images judged per run instead of the regime's number"
    )
    p.add_argument(
        "--priors", nargs="+", choices=PRIORS,
        help="attack with these priors (default: each setting's own: reference for "
        "Fashion-MNIST, generic for photographs)",
    )  # fmt: skip
    p.add_argument(
        "--extras", nargs="+", default=[], choices=[*extras.EXTRAS, "all"], metavar="EXTRA",
        help="block-wise measurements beside the runs: known-plaintext, sample-variation, "
        "demo-model, or all",
    )  # fmt: skip
    p.add_argument(
        "--table1", default="outputs/table1/table1.json",
        help="the Table I reproduction's JSON, for each scheme's top-1 in the cross-scheme table",
    )  # fmt: skip
    p.add_argument(
        "--table-only", action="store_true",
        help="measure nothing: tabulate the runs OUT holds (runs_<scheme>.json)",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.settings = list(SETTINGS) if "all" in args.settings else args.settings
    args.settings = list(dict.fromkeys(canonical(s) for s in args.settings))
    args.extras = list(extras.EXTRAS) if "all" in args.extras else args.extras
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prov = provenance(argv)
    regime = REGIMES[args.regime]
    loaded = {}

    def setting(name: str, ns: list[int]):
        if name not in loaded:
            loaded[name] = load_setting(name, ns, pool=not regime.fresh_photos)
        return loaded[name]

    rows: list[dict] = []
    for scheme in scheme_names(args.schemes):
        store = RunsFile(out / f"runs_{scheme}.json")
        for name in args.settings:
            ns = list(args.ns) if args.ns else default_ns(regime, name, args.quick)
            for prior in args.priors or [None]:
                probe = loaded.get(name) or Setting(name)  # its kind, prior, geometry
                prior = prior or probe.default_prior
                cap = scored_images(regime, probe, scheme, args.scored)
                gid = (scheme, name, regime.name, prior, cap)
                have = store.group(gid)
                todo = {(KEY_SEED + k, n) for k in range(args.keys) for n in run_ns(scheme, ns)}
                if not args.table_only and not todo <= {(r["key_seed"], r["N"]) for r in have}:

                    def save(new, store=store, gid=gid):
                        store.replace(gid, new, prov)

                    run_group(
                        scheme, setting(name, ns), regime, keys=args.keys, ns=ns, cache=out,
                        prior=prior, scored=args.scored, done=have, save=save, stamp=stamp(prov),
                    )  # fmt: skip
                # every N measured in OUT for these keys (other N of earlier runs included)
                rows += [r for r in store.group(gid) if r["key_seed"] < KEY_SEED + args.keys]
    table = tables.aggregate(rows)
    cross = tables.summary(table, tables.table1_top1(Path(args.table1)))
    kp = variation = demo = None
    if args.extras and not args.table_only:
        shared = []  # every setting with a shared pool large enough for the extras' N
        for name in args.settings:
            ns = list(args.ns or default_ns(regime, name, args.quick))
            ns += extras.VARIATION_PLAN.get(name, []) if "sample-variation" in args.extras else []
            s = loaded.get(name)
            if s is None or s.x is None or len(s.x) < pool_size(name, ns):
                s = load_setting(name, ns)
            shared.append(s)
        if "known-plaintext" in args.extras:
            kp = extras.known_plaintext_rows(shared, keys=args.keys)
        if "sample-variation" in args.extras:
            variation = extras.sample_variation(shared)
        if "demo-model" in args.extras:
            demo = extras.demo_model_rows()
    result = {
        "provenance": prov,
        "regime": regime.name,
        "request": vars(args),
        "summary": cross if regime.name == "sample" else None,
        "table": table,
        "runs": rows,
        "known_plaintext": kp,
        "sample_variation": variation,
        "demo_model": demo,
        "seconds": time.perf_counter() - t0,
        "note": "median (worst) over keys (worst: lowest, seconds: highest); images judged per "
        f"run: {_judged(regime)}",
    }
    write_json(out / "security_eval.json", result)
    md = tables.report(
        table,
        regime.name,
        cross=cross if regime.name == "sample" else None,
        kp=kp,
        variation=variation,
        demo=demo,
    )
    md += f"\nMade by `{prov['command']}` at commit {prov['commit']}"
    md += f"{' (dirty work tree)' if prov['dirty'] else ''}, {prov['date']}.\n"
    write_text(out / "security_eval.md", md)
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return result


def _judged(regime) -> str:
    """The images each run judges, in words."""
    alone = SCORED_PER_IMAGE
    alone = f"without a shared key {alone['fmnist']} / {alone['photo']}, each attacked alone"
    if regime.scored["fmnist"] is None:
        return f"every attacked image ({alone})"
    where = "of each key's sample" if regime.beyond_n else "of the attacked images"
    return (
        f"the first {regime.scored['fmnist']} Fashion-MNIST images / {regime.scored['photo']} "
        f"photographs {where} ({alone})"
    )


if __name__ == "__main__":
    main()
