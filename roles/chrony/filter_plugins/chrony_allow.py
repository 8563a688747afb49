"""Filter of the chrony role.

edgefleet_chrony_cidr_problems(cidrs)
    One message per entry of *cidrs* (chrony_allow) that is not a network
    in CIDR form, naming the value and what is wrong with it; empty when all
    are good. chronyd itself would accept some of these in its config check
    (`chronyd -p` does not read allow's subnets) and then refuse to start,
    so the role asks this before anything changes.
"""

import ipaddress


def cidr_problems(cidrs):
    if not isinstance(cidrs, (list, tuple)):
        return ["chrony_allow must be a list of CIDRs, not %r" % (cidrs,)]
    problems = []
    for entry in cidrs:
        if not isinstance(entry, str) or "/" not in entry:
            problems.append("'%s' is not in CIDR form (address/prefix; one host is /32 or /128)" % (entry,))
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as e:
            problems.append("'%s' is not a network: %s" % (entry, e))
            continue
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            problems.append("'%s' has host bits set: did you mean %s?"
                            % (entry, ipaddress.ip_network(entry, strict=False)))
    return problems


class FilterModule:
    def filters(self):
        return {"edgefleet_chrony_cidr_problems": cidr_problems}
