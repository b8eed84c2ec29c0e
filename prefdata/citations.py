"""BibTeX of the papers behind the trainer's losses and the stages that share them (DPO: the implicit reward,
the reference log-probs); a leaf module, free of torch, so any layer may cite from it."""

from __future__ import annotations

CITATIONS = {
    "dpo": """@inproceedings{rafailov2023direct,
  title={Direct Preference Optimization: Your Language Model is Secretly a Reward Model},
  author={Rafailov, Rafael and Sharma, Archit and Mitchell, Eric and Ermon, Stefano and Manning, Christopher D. and Finn, Chelsea},
  booktitle={NeurIPS},
  year={2023},
  note={arXiv:2305.18290}
}""",
    "cdpo": """@misc{mitchell2023note,
  title={A note on DPO with noisy preferences \\& relationship to IPO},
  author={Mitchell, Eric},
  year={2023},
  howpublished={https://ericmitchell.ai/cdpo.pdf}
}""",
    "robust": """@inproceedings{chowdhury2024provably,
  title={Provably Robust DPO: Aligning Language Models with Noisy Feedback},
  author={Chowdhury, Sayak Ray and Kini, Anush and Natarajan, Nagarajan},
  booktitle={ICML},
  year={2024},
  note={arXiv:2403.00409}
}""",
    "ipo": """@article{azar2023general,
  title={A General Theoretical Paradigm to Understand Learning from Human Preferences},
  author={Azar, Mohammad Gheshlaghi and Rowland, Mark and Piot, Bilal and Guo, Daniel and Calandriello, Daniele and Valko, Michal and Munos, R{\\'e}mi},
  journal={arXiv preprint arXiv:2310.12036},
  year={2023}
}""",
    "hinge": """@article{zhao2023slic,
  title={SLiC-HF: Sequence Likelihood Calibration with Human Feedback},
  author={Zhao, Yao and Joshi, Rishabh and Liu, Tianqi and Khalman, Misha and Saleh, Mohammad and Liu, Peter J.},
  journal={arXiv preprint arXiv:2305.10425},
  year={2023}
}""",
    "margin": """@article{wang2024secrets,
  title={Secrets of RLHF in Large Language Models Part II: Reward Modeling},
  author={Wang, Binghai and Zheng, Rui and Chen, Lu and others},
  journal={arXiv preprint arXiv:2401.06080},
  year={2024}
}""",
    "rationale": """@article{just2024data,
  title={Data-Centric Human Preference Optimization with Rationales},
  author={Just, Hoang Anh and Jin, Ming and Sahu, Anit and Phan, Huy and Jia, Ruoxi},
  journal={arXiv preprint arXiv:2407.14477},
  year={2024}
}""",
    "rise": """@article{xu2024subtle,
  title={Subtle Errors Matter: Preference Learning via Error-injected Self-editing},
  author={Xu, Kaishuai and Wu, Tiezheng and Wang, Wenjun and Li, Jing and Zhong, Zhengyang and Li, Wenjie},
  journal={arXiv preprint arXiv:2410.06638},
  year={2024}
}""",
}
