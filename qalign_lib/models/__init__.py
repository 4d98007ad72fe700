"""Models and generation: loading a model and tokenizer (modeling), our greedy decoding loop (generation), and the
generation engines behind one interface, hf and vLLM (engines).
"""
