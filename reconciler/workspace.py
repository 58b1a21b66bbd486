"""A project directory: its spec, its providers, its state. The edge the CLI drives."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

from reconciler.errors import UserError
from reconciler.providers import base as caps
from reconciler.providers.base import Provider, ProviderConfig

# Spec provider fields handed to the provider as ``ProviderConfig.options`` (when set);
# type, api_key, base_url, rate_limit and path have fields of their own.
PROVIDER_OPTIONS = (
    "total_rate_limit",
    "timeout",
    "max_retries",
    "backoff_base",
    "send_urls",
    "train_timeout",
    "team_id",
    "project_id",
    "group_name",
    "project",
    "output_layer",
)


class Workspace:
    def __init__(self, workdir: Path, spec_file: str = "modelsync.yaml"):
        self.spec_file = spec_file
        self.workdir = workdir.resolve()
        self.spec_path = (self.workdir / spec_file).resolve()
        self._providers: dict[str, Provider] = {}
        self.spec_error: Any = None  # the last specs.SpecError, if the spec failed to load

    @property
    def project_dir(self) -> Path:
        """Where `.modelsync/` and the lock file live: the spec's directory."""
        return self.spec_path.parent

    @cached_property
    def spec(self) -> Any:
        from specs import SpecError, load_spec

        if not self.spec_path.exists():
            raise UserError(f"{self._shown_spec()}: no such file (use -C DIR or -f FILE)")
        try:
            return load_spec(self.spec_path, shown=self._shown_spec())
        except SpecError as exc:
            self.spec_error = exc  # validate reads its draft to check the sources all the same
            raise UserError(*(str(d) for d in exc.diagnostics)) from None

    def _shown_spec(self) -> str:
        """Relative to the working directory when inside it, else as given with -f (relative to -C)."""
        try:
            return str(self.spec_path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return self.spec_file

    def spec_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.spec_path.read_bytes()).hexdigest()

    def provider_config(self, name: str) -> ProviderConfig:
        p = self.spec.providers[name]
        key = p.api_key.get_secret_value() if getattr(p, "api_key", None) is not None else None
        options = {k: getattr(p, k) for k in PROVIDER_OPTIONS if getattr(p, k, None) is not None}
        return ProviderConfig(
            name=name,
            type=p.type,
            api_key=key,
            base_url=p.base_url,
            rate_limit=p.rate_limit,
            path=p.path,
            options=options,
            workdir=self.project_dir,
        )

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            from reconciler.providers import make_provider

            self._providers[name] = make_provider(self.provider_config(name))
        return self._providers[name]

    def provider_for_model(self, key: str) -> Provider:
        name, _ = self.spec.provider_for(key)
        return self.provider(name)

    def providers_in_use(self) -> dict[str, Provider]:
        return dict(self._providers)

    def close(self) -> None:
        for p in self._providers.values():
            p.close()
        self._providers.clear()

    # -- checks that need to know providers, still with no remote call ----------------
    def capability_errors(self) -> list[str]:
        """Everything the spec asks of a provider that it cannot do, as file:line:col lines."""
        from reconciler.providers import provider_class
        from reconciler.sources import is_url

        spec = self.spec
        out: list[str] = []
        for key, model in spec.models.items():
            pname, pspec = spec.provider_for(key)
            have = provider_class(pspec.type).capabilities
            where = ("models", key)

            def need(cap: str, path: tuple, what: str, have=have, pspec=pspec) -> None:
                if cap not in have:
                    out.append(str(spec.diagnostic(path, f"provider type '{pspec.type}' cannot {what}")))

            if len(model.classes) > 1:
                need(caps.CAP_CLASSES, (*where, "classes"), "hold more than one class per model")
            t = model.training
            if t.config:
                need(caps.CAP_CONFIGURE, (*where, "training", "config"), "take a training config")
                for ckey, message in provider_class(pspec.type).training_config_errors(dict(t.config)):
                    at = (*where, "training", "config", *((ckey,) if ckey else ()))
                    out.append(str(spec.diagnostic(at, message, at_key=message.startswith("unknown key"))))
            if t.model_type != "small":
                need(caps.CAP_MODEL_TYPE, (*where, "training", "model_type"), "choose a model_type")
            if t.base:
                need(caps.CAP_TRAIN_BASE, (*where, "training", "base"), "fine-tune from a base version")
            for cname, cls in model.classes.items():
                for i, entry in enumerate(cls.samples):
                    path = (*where, "classes", cname, "samples", i)
                    text = entry if isinstance(entry, str) else (entry.path or entry.url)
                    if is_url(text):
                        need(caps.CAP_UPLOAD_URLS, path, "take samples by URL")
                    else:
                        need(caps.CAP_UPLOAD_BYTES, path, "upload local files (it takes image URLs only)")
                    if not isinstance(entry, str):
                        if entry.caption is not None:
                            need(caps.CAP_CAPTIONS, (*path, "caption"), "store captions")
                        if entry.boxes:
                            need(caps.CAP_BOXES, (*path, "boxes"), "store boxes")
            del pname
        return out
