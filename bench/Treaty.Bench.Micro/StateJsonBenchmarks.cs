using System.Text;
using BenchmarkDotNet.Attributes;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Storage.Sqlite;

namespace Treaty.Bench.Micro;

/// <summary>
/// The JSON of one durable write of a 3-step saga, as the SQLite store does it
/// (<see cref="StoredValues"/>: the whole <see cref="TransactionState"/>, spec included, through the
/// source-generated context): the state of the submit's write, and that of the last write (every
/// step answered, committed). Deserialize is what a read, a reload or a recovery pays.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(warmupCount: 2, iterationCount: 6)]
[IterationTime(250)]
public class StateJsonBenchmarks
{
    private TransactionState _state = null!;
    private string _json = "";

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
        _json = StoredValues.Serialize(_state);
        Console.WriteLine($"// {Write}: state_json is {Encoding.UTF8.GetByteCount(_json)} bytes");
    }

    [Benchmark(Description = "serialize state")]
    public string Serialize() => StoredValues.Serialize(_state);

    [Benchmark(Description = "deserialize state")]
    public TransactionState Deserialize() => StoredValues.Deserialize(_json);
}
