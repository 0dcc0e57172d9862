"""Cost model: parameters, FLOPs and attention memory by component."""
from .cost import (CostReport, activation_memory, attention_matrix_memory, complexity_table, cost_report,
                   count_flops, count_params, lecture_figures, measured_flops)

__all__ = ["CostReport", "activation_memory", "attention_matrix_memory", "complexity_table", "cost_report",
           "count_flops", "count_params", "lecture_figures", "measured_flops"]
