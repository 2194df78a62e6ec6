namespace Treaty.Cli.Experiments;

/// <summary>Every experiment of the demo, in the order it runs them.</summary>
internal static class ExperimentCatalogue
{
    public static IReadOnlyList<Experiment> All { get; } =
    [
        BlockingExperiment.Definition,
        ThreePhaseCommitExperiment.Definition,
        ThreePhasePartitionExperiment.Definition,
        IsolationExperiment.Definition,
        DoubleChargeExperiment.Definition,
        AvailabilityExperiment.Definition,
        LatencyExperiment.Definition,
    ];
}
