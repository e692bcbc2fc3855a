"""``WDAForCausalLM``: the WaveCharLM skeleton (docs/architecture.md §2.1) as a Hugging Face causal LM."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.utils.deprecation import deprecate_kwarg

from ..layers import (
    WaveDensityAttention,
    WDABlock,
    WDACache,
    fuse_input_projections,
    input_projection_sizes,
    torch_default_init_,
)
from ..ops.loss import linear_cross_entropy, logits_cross_entropy
from .configuration import WDAConfig
from .release import from_release_state_dict, read_release


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a saved model directory: one file, or the shards its index names."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / shard for shard in shards]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def fused_old_checkpoint(directory: Path, config: WDAConfig) -> dict[str, torch.Tensor] | None:
    """The weights of a checkpoint saved before WDA's input projections were fused into ``in_proj``
    (``mixer.v_proj`` / ``q_mod`` / ``k_mod`` / ``gate_in`` / ``scale_in``), with them fused; None
    for a checkpoint of the current layout (read key names only)."""
    files = weight_files(directory)
    keys = set()
    for path in files:
        with safe_open(path, framework="pt") as f:
            keys.update(f.keys())
    if config.mixer != "wda" or not any(key.endswith(".mixer.v_proj.weight") for key in keys):
        return None
    state_dict = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            state_dict.update({key: f.get_tensor(key) for key in f.keys()})
    for index in range(config.num_layers):
        fuse_input_projections(state_dict, f"model.layers.{index}.mixer.", input_projection_sizes(config))
    return state_dict


class WDAPreTrainedModel(PreTrainedModel):
    config: WDAConfig
    config_class = WDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WDABlock"]
    # WDA state is running sums and cannot be rolled back: no assisted decoding, no cache cropping.
    _is_stateful = True

    def _init_weights(self, module):
        # config.init "release": PyTorch's own defaults, as the release (which sets nothing else) trained;
        # "normal": the Hugging Face convention N(0, initializer_range). Norms start at ones and zeros in both.
        release = self.config.init == "release"
        if not (release and torch_default_init_(module)):
            super()._init_weights(module)
        if isinstance(module, WaveDensityAttention):
            module.reset_parameters()
        elif isinstance(module, WDAModel):
            if release:
                init.zeros_(module.pos_emb)
            else:
                init.normal_(module.pos_emb, 0.0, self.config.initializer_range)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward() creates the WDACache itself


class WDAModel(WDAPreTrainedModel):
    """Embeddings (token + learned absolute position), post-norm blocks, final LayerNorm."""

    def __init__(self, config: WDAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.seq_len, config.embed_dim))
        self.layers = nn.ModuleList([WDABlock(config, index) for index in range(config.num_layers)])
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def _validate(self, input_ids, inputs_embeds, attention_mask, cache, offset: int) -> None:
        """Bad inputs fail here, with the problem named, not deep inside torch."""
        config = self.config
        # Checks that read token values make an accelerator wait for the host. Training batches come
        # from the trainer, which checks the tokenizer against the vocabulary once, so on accelerators
        # (and inside torch.compile, where they would break the graph) the id range is checked outside
        # training only; a padding mask, which a collator may pass, is refused everywhere but in compiled graphs.
        inputs = input_ids if input_ids is not None else inputs_embeds
        compiling = torch.compiler.is_compiling()
        read_values = not compiling and (inputs.device.type == "cpu" or not self.training)
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
                raise ValueError(f"input_ids must be an integer tensor [batch, seq], got {input_ids.dtype} "
                                 f"{list(input_ids.shape)}")
            if read_values and input_ids.numel() and bool(((input_ids < 0) | (input_ids >= config.vocab_size)).any()):
                raise ValueError(f"input_ids hold ids outside the vocabulary [0, {config.vocab_size})")
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.embed_dim:
                raise ValueError(f"inputs_embeds must be [batch, seq, {config.embed_dim}], got {list(inputs_embeds.shape)}")
            if inputs_embeds.dtype != self.pos_emb.dtype:
                raise ValueError(f"inputs_embeds are {inputs_embeds.dtype} but the model is {self.pos_emb.dtype}")
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if length < 1:
            raise ValueError("empty input: need at least one token")
        if cache is not None and (not isinstance(cache, WDACache) or len(cache.layers) != config.num_layers):
            raise ValueError(f"cache must be a WDACache with {config.num_layers} layers, got {cache!r}")
        if offset + length > config.seq_len:
            what = f"{length} tokens" if offset == 0 else f"{offset} cached + {length} new tokens"
            raise ValueError(
                f"input of {what} exceeds the model's context of seq_len={config.seq_len} positions "
                f"(learned absolute positions and wave masks are defined up to {config.seq_len}); shorten the "
                f"prompt or generate at most {config.seq_len} tokens in total"
            )
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] not in (
                    length, offset + length):
                raise ValueError(f"attention_mask must be [batch, seq] = [{batch}, {offset + length}], "
                                 f"got {list(attention_mask.shape)}")
            if not compiling and not bool(attention_mask.all()):
                raise ValueError(
                    "attention_mask with padding is not supported: WDA uses absolute positions and routes on the "
                    "mean of the prefix, so pad tokens would change the output; batch prompts of equal length"
                )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: WDACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and self.gradient_checkpointing and self.training:
            use_cache = False  # recomputing a block in backward would advance its cache a second time
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache and cache is None:
            cache = WDACache(self.config.num_layers)
        offset = cache.get_seq_length() if isinstance(cache, WDACache) else 0
        self._validate(input_ids, inputs_embeds, attention_mask, cache, offset)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            positions = self.pos_emb[:, offset : offset + length]
        else:
            if int(position_ids.max()) >= self.config.seq_len or int(position_ids.min()) < 0:
                raise ValueError(f"position_ids must lie in [0, {self.config.seq_len})")
            positions = self.pos_emb[0, position_ids]
        hidden = inputs_embeds + positions

        pooled_replay = cache is not None and "wda" in self.config.layer_mixers() and self.config.routing == "pooled"
        if pooled_replay:
            # Pooled routing is not causal: every new token changes all earlier hidden states, so there
            # is nothing to carry but the embeddings. Re-run the whole window (what the release does).
            state = cache.layers[0]
            previous = state.get("pooled_inputs")
            hidden = hidden if previous is None else torch.cat([previous, hidden], dim=1)
            state.set(pooled_inputs=hidden)
            state.length += length
        all_hidden = []
        for index, layer in enumerate(self.layers):
            all_hidden.append(hidden)
            layer_state = cache.layers[index] if cache is not None and not pooled_replay else None
            hidden = layer(hidden, layer_state)
        hidden = self.norm(hidden)
        all_hidden.append(hidden)
        if pooled_replay:
            hidden = hidden[:, -length:]
            all_hidden = [h[:, -length:] for h in all_hidden]
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
        )


class WDAForCausalLM(WDAPreTrainedModel, GenerationMixin):
    """Wave-Density Attention language model (or, with ``mixer="softmax"``, its softmax baseline)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: WDAConfig):
        super().__init__(config)
        self.model = WDAModel(config)
        self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        self._compiled_step = None  # set by compile_decoding()
        self._compiled_versions = None
        self.post_init()

    def compile_blocks(self, **compile_kwargs) -> "WDAForCausalLM":
        """``torch.compile`` each decoder block in place (keyword arguments go to ``nn.Module.compile``);
        returns the model.

        The blocks are the hot path of a training step; the input checks, embeddings, head and loss stay
        eager. Inductor fuses WDA's elementwise passes and small batched products around the GEMMs, which
        SDPA already does for softmax, so compiling gains more for WDA (measured in docs/benchmarks.md).
        The first forward and backward compile (about a minute at width 768 on a CPU); identical blocks
        share one compiled graph.
        """
        for block in self.model.layers:
            block.compile(**compile_kwargs)
        return self

    def use_decoding_layout(self, enabled: bool = True) -> "WDAForCausalLM":
        """Store every linear layer's weight transposed in memory (column-major), or with ``enabled=False``
        row-major again; returns the model. Values, shapes, names and the state dict's values stay the same
        (its tensors' strides change; ``save_pretrained`` writes contiguous copies). A tied embedding shares
        the head's parameter, so it becomes column-major too.

        A one-token decoding step multiplies each weight by one row per sequence. On CPUs the BLAS reads a
        row-major ``(out, in)`` weight for ``x @ W.T`` well below the memory's rate and a column-major one
        close to it (docs/benchmarks.md: batch-1 decoding of the 130M preset ~1.3x faster on one thread).
        Training is best left to the row-major layout. Apply it before ``compile_decoding()``: the weights
        are relaid in place, and a step compiled with frozen weights keeps the layout it was compiled with.
        """
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):  # a tied head and embedding share one parameter: relaid once
                    weight = module.weight.data
                    module.weight.data = weight.t().contiguous().t() if enabled else weight.contiguous()
        return self

    def compile_decoding(self, freeze_weights: bool = True) -> "WDAForCausalLM":
        """Run every one-token cached step (each token ``generate`` adds after the prompt) through
        ``torch.compile``; returns the model.

        Inductor fuses each layer's small per-token operators, whose dispatch is about half of an eager
        step at batch 1 on CPU. With ``freeze_weights`` (the default) the weights are compiled in as
        constants, so the GEMMs use prepacked weights (the larger gain at batch > 1); the compiled step
        then refuses to run once any weight has changed: call ``compile_decoding()`` again after training
        or loading weights. The first step at a new batch size compiles (about a minute for the 130M
        preset on a CPU); prompts, several tokens at once, training and hidden-state outputs stay eager.
        Calling it again resets ``torch.compile``'s caches for the whole process (``torch.compiler.reset``).
        """
        if self._compiled_step is not None:
            torch.compiler.reset()  # frozen constants are not guarded: only a reset recompiles them

        def one_token_step(input_ids, cache):
            hidden = self.model(input_ids=input_ids, cache=cache, use_cache=True).last_hidden_state
            return self.lm_head(hidden)

        self._compiled_step = torch.compile(one_token_step, dynamic=True, options={"freezing": freeze_weights})
        self._compiled_versions = self._weight_versions() if freeze_weights else None
        return self

    def _weight_versions(self) -> list[int]:
        # every in-place change of a tensor (optimizer steps, load_state_dict's copies) bumps its version
        return [tensor._version for tensor in self.state_dict(keep_vars=True).values()]

    def _compiled_logits(self, input_ids, cache):
        if self._compiled_versions is not None and self._weight_versions() != self._compiled_versions:
            raise RuntimeError("the weights changed after compile_decoding(freeze_weights=True) compiled them in; "
                               "call model.compile_decoding() again")
        return self._compiled_step(input_ids, cache)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: WDACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        **loss_kwargs,
    ) -> CausalLMOutputWithPast:
        if output_attentions:
            raise ValueError("WDA has no attention matrix to return (output_attentions=True)")
        # generate() passes its tokenizer along to the model; anything else unknown is a caller's mistake
        unknown = sorted(set(loss_kwargs) - {"num_items_in_batch", "shift_labels", "tokenizer", "assistant_tokenizer"})
        if unknown:
            raise TypeError(f"WDAForCausalLM.forward got unexpected arguments {unknown}")
        one_token_step = (self._compiled_step is not None and isinstance(cache, WDACache) and use_cache is not False
                          and input_ids is not None and input_ids.shape[1] == 1 and inputs_embeds is None
                          and attention_mask is None and labels is None
                          # generate() passes the next position, which the cache's length already gives
                          and (position_ids is None or bool((position_ids == cache.get_seq_length()).all()))
                          and loss_kwargs.get("shift_labels") is None and not output_hidden_states
                          and not self.training and not torch.is_grad_enabled())
        if one_token_step:
            result = CausalLMOutputWithPast(logits=self._compiled_logits(input_ids, cache), cache=cache)
            return result if return_dict is not False else result.to_tuple()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        shift_labels, num_items = loss_kwargs.get("shift_labels"), loss_kwargs.get("num_items_in_batch")
        if shift_labels is None and labels is not None:
            # HF convention: labels are the inputs; position t predicts label t+1 (the last predicts nothing)
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        logits = loss = None
        if shift_labels is not None and self.training and torch.is_grad_enabled():
            # Training: loss chunk by chunk, never holding [batch, seq, vocab] logits (returned as None).
            loss = linear_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, shift_labels.flatten(),
                                        num_items=num_items)
        else:
            logits = self.lm_head(hidden)
            if shift_labels is not None:
                loss = logits_cross_entropy(logits.flatten(0, 1), shift_labels.flatten(), num_items=num_items)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )
        return result if return_dict is not False else result.to_tuple()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, refusing a release-format directory (whose keys it would
        not find, leaving every weight random) with a pointer to ``from_release``."""
        config_path = Path(str(pretrained_model_name_or_path)) / "config.json"
        if config_path.is_file():
            try:
                has_type = "model_type" in json.loads(config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
                raise ValueError(f"{config_path}: not a valid JSON config ({err})") from None
            if not has_type:
                raise ValueError(
                    f"{config_path} has no model_type: this looks like a released WaveCharLM checkpoint; "
                    "load it with WDAForCausalLM.from_release() (on the command line: --release, or `wda convert-release`)"
                )
            config = kwargs.pop("config", None) or WDAConfig.from_pretrained(config_path.parent)
            fused = fused_old_checkpoint(config_path.parent, config)
            if fused is not None:  # transformers' loader matches names only: hand it the fused tensors
                return super().from_pretrained(None, *args, config=config, state_dict=fused, **kwargs)
            kwargs["config"] = config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_release(cls, directory, **overrides) -> "WDAForCausalLM":
        """Load a released WaveCharLM directory (``config.json`` + ``model.safetensors``).

        Returns the model with ``routing="pooled", gate="release"``, which reproduces the release's
        logits; pass e.g. ``routing="prefix"`` to run the same weights causally.
        """
        config, release = read_release(directory, **overrides)
        model = cls(config)
        model.load_state_dict(from_release_state_dict(release, config, model.state_dict()), strict=True)
        return model.eval()
