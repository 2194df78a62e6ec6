namespace Treaty.AspNetCore.SemanticLocks;

/// <summary>Settings of <see cref="SemanticLockManager"/>.</summary>
public sealed class SemanticLockOptions
{
    /// <summary>
    /// How long a lock protects its holder without being renewed (acquiring it again with the same
    /// gid renews it). After that another gid may take it over: the holder is presumed crashed or
    /// its transaction stuck. Choose it longer than a branch's normal time in flight, retries
    /// included. Default 15 minutes.
    /// </summary>
    public TimeSpan Timeout { get; set; } = SemanticLockDefaults.Timeout;

    /// <summary>The problems of these settings, or an empty list when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (Timeout <= TimeSpan.Zero || Timeout > SemanticLockDefaults.MaxTimeout)
        {
            problems.Add($"SemanticLockOptions.Timeout must be positive and at most {SemanticLockDefaults.MaxTimeout}.");
        }

        return problems;
    }
}

/// <summary>Every default of the semantic locks in one place.</summary>
public static class SemanticLockDefaults
{
    /// <summary>Default <see cref="SemanticLockOptions.Timeout"/>.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromMinutes(15);

    /// <summary>Largest accepted <see cref="SemanticLockOptions.Timeout"/>.</summary>
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromDays(7);

    /// <summary>Longest resource name or gid accepted.</summary>
    public const int MaxKeyLength = 256;
}
