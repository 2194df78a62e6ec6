using BenchmarkDotNet.Attributes;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;

namespace Treaty.Bench.Micro;

/// <summary>
/// The JSON of one durable write of a 3-step saga, as the stores do it (<see cref="StoredStateCodec"/>:
/// a decision writes only the progress as UTF-8; the spec is written once by the insert): the state
/// of the submit's write, and that of the last write (every step answered, committed). Read is what
/// a read, a reload or a recovery pays (progress and spec).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(warmupCount: 2, iterationCount: 6)]
[IterationTime(250)]
public class StateJsonBenchmarks
{
    private TransactionState _state = null!;
    private byte[] _spec = [];
    private byte[] _progress = [];

    /// <summary>Which of the saga's four writes.</summary>
    [Params("submitted", "committed")]
    public string Write { get; set; } = "submitted";

    [GlobalSetup]
    public void Setup()
    {
        var run = new Driver(new SagaMachine(), Machines.Saga());
        run.Send(new Submitted());
        if (Write == "committed")
        {
            for (var i = 0; i < Machines.Names.Length; i++)
            {
                run.Send(run.Answer(i, ProtocolNames.Action));
            }
        }

        _state = run.State;
        _spec = StoredStateCodec.Spec(_state.Spec);
        _progress = StoredStateCodec.Progress(_state);
        Console.WriteLine($"// {Write}: progress is {_progress.Length} bytes, the spec (written once) {_spec.Length} bytes");
    }

    [Benchmark(Description = "serialize progress (each decision)")]
    public byte[] Serialize() => StoredStateCodec.Progress(_state);

    [Benchmark(Description = "read state (progress + spec)")]
    public TransactionState Deserialize() => StoredStateCodec.Read(_spec, _progress);
}
