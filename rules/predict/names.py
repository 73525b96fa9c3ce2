"""The prediction features' names and types: a module of its own, so the rule engine (and the configuration
that compiles it) names them without loading numpy and scipy's models (``lifecycle report`` starts fast)."""

PREDICTION_FEATURES: dict[str, str] = {
    "p_alive": "number",
    "exp_purchases_30d": "number",
    "exp_purchases_90d": "number",
    "exp_purchases_365d": "number",
    "p_buy_30d": "number",
    "next_purchase_median_days": "number",
    "exp_order_value": "number",
    "clv_365d": "number",
}
