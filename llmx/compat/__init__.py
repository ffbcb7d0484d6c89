"""(filled in by issue 22)"""
