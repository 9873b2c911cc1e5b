"""(filled by its op family)"""
