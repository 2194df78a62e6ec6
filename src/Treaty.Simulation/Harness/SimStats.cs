using System.Globalization;
using System.Text;

namespace Treaty.Simulation.Harness;

/// <summary>
/// What happened in runs, by name, to show the sweep's fault coverage: a change that silently
/// stopped injecting a fault (or a protocol that stopped being exercised) shows up as a zero.
/// Counters keep the order they were first added in, so the line reads the same every time.
/// </summary>
internal sealed class SimStats
{
    private readonly List<string> _order = [];
    private readonly Dictionary<string, long> _values = new(StringComparer.Ordinal);

    public long this[string name] => _values.GetValueOrDefault(name);

    public SimStats Add(string name, long value)
    {
        if (!_values.TryGetValue(name, out var current))
        {
            _order.Add(name);
        }

        _values[name] = current + value;
        return this;
    }

    public void AddAll(SimStats other)
    {
        foreach (var name in other._order)
        {
            Add(name, other._values[name]);
        }
    }

    /// <summary>One line per group (the part of a name before its first space).</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        string? group = null;
        foreach (var name in _order)
        {
            var space = name.IndexOf(' ', StringComparison.Ordinal);
            var g = space < 0 ? "" : name[..space];
            var label = space < 0 ? name : name[(space + 1)..];
            if (g != group)
            {
                text.Append(group is null ? "" : "\n  ").Append(g.Length == 0 ? "" : g + ": ");
                group = g;
            }
            else
            {
                text.Append(", ");
            }

            text.Append(label).Append('=').Append(_values[name].ToString(CultureInfo.InvariantCulture));
        }

        return text.ToString();
    }
}
