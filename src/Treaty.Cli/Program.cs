using System.CommandLine;
using Treaty.Cli;

var root = new RootCommand("treaty: a distributed transaction coordinator")
{
    ServeCommand.Create(),
    DemoCommand.Create(),
    TxCommands.Create(),
    SimulateCommand.Create(),
    BenchCommand.Create(),
};
return await CliConsole.RunAsync(root, args);
