namespace Treaty.Core.Model;

/// <summary>The dependency graph of a transaction's branches (edges from a branch to those it depends on).</summary>
internal sealed class Dag
{
    private readonly List<int>[] _dependsOn;
    private readonly List<int>[] _dependents;

    private Dag(int count)
    {
        _dependsOn = new List<int>[count];
        _dependents = new List<int>[count];
        for (var i = 0; i < count; i++)
        {
            _dependsOn[i] = [];
            _dependents[i] = [];
        }
    }

    public static Dag From(TransactionSpec spec)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            index.TryAdd(spec.Branches[i].Name, i);
        }

        var dag = new Dag(spec.Branches.Length);
        for (var i = 0; i < spec.Branches.Length; i++)
        {
            foreach (var dependency in spec.Branches[i].DependsOn)
            {
                if (index.TryGetValue(dependency, out var j))
                {
                    dag._dependsOn[i].Add(j);
                    dag._dependents[j].Add(i);
                }
            }
        }

        return dag;
    }

    public HashSet<int> Ancestors(int node) => Reach(node, _dependsOn);

    public HashSet<int> Descendants(int node) => Reach(node, _dependents);

    /// <summary>The index of one branch on a cycle, or null when the graph is acyclic.</summary>
    public int? FindCycle()
    {
        var state = new byte[_dependsOn.Length]; // 0 new, 1 on stack, 2 done
        for (var start = 0; start < state.Length; start++)
        {
            if (state[start] != 0)
            {
                continue;
            }

            var stack = new Stack<(int Node, int Next)>();
            stack.Push((start, 0));
            state[start] = 1;
            while (stack.Count > 0)
            {
                var (node, next) = stack.Pop();
                if (next < _dependsOn[node].Count)
                {
                    stack.Push((node, next + 1));
                    var child = _dependsOn[node][next];
                    if (state[child] == 1)
                    {
                        return child;
                    }

                    if (state[child] == 0)
                    {
                        state[child] = 1;
                        stack.Push((child, 0));
                    }
                }
                else
                {
                    state[node] = 2;
                }
            }
        }

        return null;
    }

    private static HashSet<int> Reach(int node, List<int>[] edges)
    {
        var seen = new HashSet<int>();
        var queue = new Queue<int>(edges[node]);
        while (queue.TryDequeue(out var next))
        {
            if (seen.Add(next))
            {
                foreach (var further in edges[next])
                {
                    queue.Enqueue(further);
                }
            }
        }

        return seen;
    }
}
