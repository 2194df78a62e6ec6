using System.Globalization;

namespace Treaty.Cli;

/// <summary>Durations on the command line: a whole number and a unit, <c>500ms</c>, <c>30s</c>,
/// <c>10m</c>, <c>12h</c>, <c>7d</c>.</summary>
internal static class DurationText
{
    private static readonly (string Suffix, TimeSpan Unit)[] Units =
    [
        ("ms", TimeSpan.FromMilliseconds(1)),
        ("s", TimeSpan.FromSeconds(1)),
        ("m", TimeSpan.FromMinutes(1)),
        ("h", TimeSpan.FromHours(1)),
        ("d", TimeSpan.FromDays(1)),
    ];

    /// <summary>True when <paramref name="text"/> is a positive whole number followed by a unit.</summary>
    public static bool TryParse(string? text, out TimeSpan duration)
    {
        duration = default;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        text = text.Trim();
        foreach (var (suffix, unit) in Units)
        {
            // "ms" is tried before "s" and "m", so "500ms" is never read as 500 m with a stray s.
            if (text.EndsWith(suffix, StringComparison.OrdinalIgnoreCase)
                && long.TryParse(text.AsSpan(0, text.Length - suffix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out var count)
                && count > 0
                && count <= TimeSpan.MaxValue.Ticks / unit.Ticks)
            {
                duration = TimeSpan.FromTicks(count * unit.Ticks);
                return true;
            }
        }

        return false;
    }
}
