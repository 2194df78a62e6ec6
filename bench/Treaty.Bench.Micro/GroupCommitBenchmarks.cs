using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Storage.Sqlite;

namespace Treaty.Bench.Micro;

/// <summary>
/// The SQLite store's group commit: <see cref="Writers"/> concurrent writers, each updating its own
/// transaction in a chain (the next write starts when the previous is durable, as the engine does),
/// each write one saga state at the next version plus its two journal rows (the step's answer and
/// the next attempt). A file in a fresh temp directory, WAL, <c>synchronous=FULL</c>. One invocation
/// is <see cref="Operations"/> writes in all, so the time reported is per durable write: the
/// throughput of the store, fsync included. BenchmarkDotNet measures wall time only, so each
/// invocation also adds up the process's CPU time while it runs, and the cleanup prints it per
/// write (over every invocation of the run, pilot and warm-up included): what a write costs the
/// machine, whatever the disk.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(warmupCount: 2, iterationCount: 5)]
public class GroupCommitBenchmarks
{
    /// <summary>Durable writes per invocation, split evenly between the writers.</summary>
    public const int Operations = 256;

    private string _directory = "";
    private SqliteTransactionStore _store = null!;
    private TransactionState[] _states = [];
    private JournalEntry[] _journal = [];
    private TimeSpan _cpu;
    private TimeSpan _kernel;
    private long _writes;

    [Params(1, 16, 64)]
    public int Writers { get; set; }

    [GlobalSetup]
    public async Task SetupAsync()
    {
        _directory = Directory.CreateTempSubdirectory("treaty-bench-micro-").FullName;
        _store = new SqliteTransactionStore(
            new SqliteStoreOptions { Path = Path.Combine(_directory, "treaty.db") },
            NullLogger<SqliteTransactionStore>.Instance);
        await _store.InitializeAsync(CancellationToken.None);

        // The state of a saga one step in: what most of its writes look like.
        _states = new TransactionState[Writers];
        for (var i = 0; i < Writers; i++)
        {
            var run = new Driver(new SagaMachine(), Machines.Saga($"bench-gc-{i:D3}"));
            run.Send(new Submitted());
            run.Send(run.Answer(0, ProtocolNames.Action));
            _states[i] = run.State with { Version = 1 };
            await _store.InsertAsync(_states[i], [new JournalEntry(Machines.T0, JournalKinds.Submitted)], CancellationToken.None);
        }

        _journal =
        [
            new JournalEntry(Machines.T0, JournalKinds.AttemptSucceeded, "payment", ProtocolNames.Action, 1, 200, null, 2, """{"ok":true}"""),
            new JournalEntry(Machines.T0, JournalKinds.AttemptStarted, "inventory", ProtocolNames.Action, 1),
        ];
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        Console.WriteLine($"// {Writers} writers: {_cpu.TotalMicroseconds / Math.Max(1, _writes):F1} us of CPU per durable write, of which {_kernel.TotalMicroseconds / Math.Max(1, _writes):F1} us in the kernel ({_writes} writes)");
        await _store.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Benchmark(OperationsPerInvoke = Operations, Description = "chained UpdateAsync (state + 2 journal rows)")]
    public async Task UpdateAsync()
    {
        var before = Environment.CpuUsage;
        var writers = new Task[Writers];
        for (var i = 0; i < writers.Length; i++)
        {
            writers[i] = WriteChainAsync(i, Operations / Writers);
        }

        await Task.WhenAll(writers);
        var after = Environment.CpuUsage;
        _cpu += after.TotalTime - before.TotalTime;
        _kernel += after.PrivilegedTime - before.PrivilegedTime;
        _writes += Operations;
    }

    private async Task WriteChainAsync(int writer, int count)
    {
        for (var n = 0; n < count; n++)
        {
            var next = _states[writer] with { Version = _states[writer].Version + 1 };
            await _store.UpdateAsync(next, _journal, CancellationToken.None);
            _states[writer] = next;
        }
    }
}
