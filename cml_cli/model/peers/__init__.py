"""Published multi-behavior models that cascade LightGCN blocks over the behaviors in funnel
order: MB-CGCN (:mod:`.mbcgcn`) and CRGCN (:mod:`.crgcn`)."""
