# The same no-op for Google's functions-framework (an HTTP function).
def noop(request):
    return "null"
