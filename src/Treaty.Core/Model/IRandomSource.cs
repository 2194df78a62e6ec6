namespace Treaty.Core.Model;

/// <summary>Randomness as an argument, so that a seed reproduces a run.</summary>
public interface IRandomSource
{
    /// <summary>A value in [0, 1).</summary>
    double NextDouble();
}

/// <summary>A seeded source; thread-safe.</summary>
public sealed class SeededRandomSource : IRandomSource
{
#pragma warning disable CA5394, RS0030 // Jitter, not security; the one sanctioned construction of Random.
    private readonly Random _random;
    private readonly Lock _lock = new();

    public SeededRandomSource(int seed) => _random = new Random(seed);

    public double NextDouble()
    {
        lock (_lock)
        {
            return _random.NextDouble();
        }
    }
#pragma warning restore CA5394, RS0030
}
