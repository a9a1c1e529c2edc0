"""MindFormers compatibility, in one place: its YAML run configs, its names, its checkpoints.

Users arrive from MindFormers' glm3 model card with its YAML files, its
``.ckpt`` checkpoints and MindPet LoRA runs. Everything that knows MindFormers'
vocabulary lives here and turns it into this package's objects:

* :mod:`.names` - parameter names (``embedding_table``), MindPet's LoRA names,
  ``pet_config`` keys, model-zoo names; imports nothing else of the package, so
  the ``.ckpt`` reader and ``LoraConfig.from_mindformers`` use it;
* :mod:`.documents` - YAML read with the line of every key, ``--set a.b=value``
  overrides;
* :mod:`.model_config` - ``model.model_config`` / ``processor.tokenizer`` ->
  :class:`~glm3_mindspore.ChatGLM3Config`, a tokenizer, a model
  (``AutoConfig`` / ``AutoModel`` accept a YAML through it);
* :mod:`.finetune_config` - a fine-tuning run YAML -> ``TrainingArguments``,
  datasets, PEFT settings (``glm3 finetune``, ``glm3 evaluate``);
* :mod:`.parallel_config` - its parallel settings and layout (``glm3 parallel
  plan``, ``glm3 ckpt``);
* :mod:`.lora` - MindFormers LoRA / full checkpoints to and from PEFT adapters
  and hub folders (``glm3 ckpt import-mindformers`` / ``export-mindformers``).

:mod:`.names` and :mod:`.documents` sit below everything else; the readers sit
above the trainer, the parallel layouts and the checkpoint formats they fill,
so this package imports none of its sub-modules: import the one you need.
"""
