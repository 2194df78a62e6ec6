using Treaty.Bench.Peer;

// The benchmark peer: the N-step saga Treaty's bench runs, as a MassTransit 8 Courier routing slip over RabbitMQ —
// what a .NET team would otherwise pick. Each step POSTs to a no-op participant; --concurrency clients each execute
// a slip, wait for its RoutingSlipCompleted event, then start the next. `treaty bench --peer masstransit` runs it
// as a child process and reads --json FILE; it also runs alone with --self-participant:
//   dotnet run -c Release --project bench/Treaty.Bench.Peer -- --self-participant --branches 3 --concurrency 64 \
//       --duration 10 --warmup 3 --json /tmp/peer.json
// Without --rabbitmq it starts its own rabbitmq-server node on loopback and stops it by pid at the end.
var (options, error) = PeerOptions.Parse(args);
if (options is null)
{
    Console.Error.WriteLine($"Treaty.Bench.Peer: {error}");
    Console.Error.WriteLine(PeerOptions.Usage);
    return 1;
}

try
{
    return await PeerRun.RunAsync(options);
}
catch (PeerFailure failure)
{
    Console.Error.WriteLine($"Treaty.Bench.Peer failed: {failure.Message}");
    return 1;
}
