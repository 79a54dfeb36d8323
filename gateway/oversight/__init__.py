"""Human oversight levels: what each level does to a request, and how levels change."""
