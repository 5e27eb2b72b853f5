/* placeholder: replaced by the admin/CLI work */
int main (void) { return 0; }
